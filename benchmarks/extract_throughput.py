"""Benchmark: images/s of the full extraction pipeline vs bare onnxruntime on the same model and batch.

Pipeline: ``tagood.extract.extract_split`` over a folder of real image files (JPEG photos from
scikit-learn at their native 427x640 and random crops of them, 28x28 scikit-learn digits as PNG):
decode, resize + crop, EfficientNet-Lite0 forward (all outputs: logits, features, 49 tokens,
top-10 CAMs, block norms) and the fp16 safetensors cache write.
Baseline: an onnxruntime session of the same model, exported to ONNX inside this benchmark,
running on the already-preprocessed images in batches of the same size (no decode, no write),
one ``run`` per batch with all threads (onnxruntime's defaults). Also shown: the same bare forward
with the backbone's own engine threading (each batch split over the cores), which isolates the
pipeline's overhead. Prints the ratio pipeline / bare onnxruntime last (target >= 0.8).

``--device cuda``: the backbone runs through torch on the GPU (the ``auto`` engine there); the
baseline is then its bare forward on the same preprocessed batches (host array in, numpy outputs
back, as the pipeline gets them), and also shown is the forward alone on a batch already on the GPU.
Prints ``pipeline_vs_bare_forward`` last.

    python benchmarks/extract_throughput.py [--n 512] [--batch-size 64] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

from tagood import data
from tagood.backbones.efficientnet import (
    EfficientNetLite0,
    Lite0Features,
    export_onnx,
    load_lite0,
)
from tagood.extract import extract_split


def make_images(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    photos = [load_sample_image(p) for p in ("china.jpg", "flower.jpg")]
    digits = data.sklearn_digits()
    (root / "photo").mkdir(parents=True)
    (root / "small").mkdir(parents=True)
    for i in range(n):
        if i % 2 == 0:
            a = photos[i % 4 // 2]
            h = int(rng.integers(300, a.shape[0] + 1))
            w = int(rng.integers(300, a.shape[1] + 1))
            y, x = int(rng.integers(0, a.shape[0] - h + 1)), int(rng.integers(0, a.shape[1] - w + 1))
            Image.fromarray(a[y : y + h, x : x + w]).save(root / "photo" / f"{i:05d}.jpg", quality=90)
        else:
            digit = digits.load(int(rng.integers(len(digits)))).resize((28, 28), Image.Resampling.BILINEAR)
            digit.save(root / "small" / f"{i:05d}.png")


def time_pipeline(src: data.FolderSource, bb: EfficientNetLite0, cache: Path, n: int, batch_size: int,
                  workers: int | None = None) -> float:
    """Seconds of one full extraction of ``src`` into a new cache entry under ``cache``."""
    t = time.perf_counter()
    r = extract_split(src, bb, cache, split="bench", batch_size=batch_size, progress=False, workers=workers)
    dt = time.perf_counter() - t
    assert len(r) == n
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads for both paths (default: all cores)")
    ap.add_argument("--device", default="cpu", help="cpu (onnxruntime engine) or cuda (torch engine)")
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: the pipeline's own choice)")
    args = ap.parse_args()
    if args.device != "cpu":
        return main_device(args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        make_images(tmp_p / "imgs", args.n)
        os.environ.setdefault("TAGOOD_HOME", str(tmp_p / "home"))
        bb = EfficientNetLite0(num_threads=args.threads)
        src = data.FolderSource(tmp_p / "imgs")

        # baseline: bare onnxruntime on the same preprocessed batch, model exported here
        import onnxruntime as ort

        onnx_path = tmp_p / "bare.onnx"
        export_onnx(Lite0Features(load_lite0()), onnx_path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = bb.num_threads
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        batch = np.stack([bb.preprocess(src.load(i)) for i in range(len(src))])
        sess.run(None, {"images": batch[: args.batch_size]})  # warm-up

        def bare() -> float:
            t = time.perf_counter()
            for a in range(0, len(batch), args.batch_size):
                sess.run(None, {"images": batch[a : a + args.batch_size]})
            return time.perf_counter() - t

        # a second reference: bare onnxruntime with the pipeline's own threading (each batch split
        # over the cores, one single-thread run per part), so the pipeline's overhead alone shows
        engine = bb._onnx

        def bare_split() -> float:
            t = time.perf_counter()
            if engine is not None:
                for a in range(0, len(batch), args.batch_size):
                    engine.run_parts(batch[a : a + args.batch_size], lambda start, outs: None)
            return time.perf_counter() - t

        t_bare = min(bare() for _ in range(args.repeats))
        t_split = min(bare_split() for _ in range(args.repeats))
        t_pipe = min(time_pipeline(src, bb, tmp_p / f"cache{k}", args.n, args.batch_size) for k in range(args.repeats))
        ips_bare, ips_split, ips_pipe = args.n / t_bare, args.n / t_split, args.n / t_pipe
        print(f"images: {args.n} (half JPEG photos ~300-640 px, half 28x28 PNG digits), batch {args.batch_size}, "
              f"threads {bb.num_threads}")
        print(f"bare onnxruntime forward            : {ips_bare:7.1f} images/s (one session run per batch, "
              f"{bb.num_threads} threads)")
        print(f"bare onnxruntime, batch split       : {ips_split:7.1f} images/s (the pipeline's engine threading, nothing else)")
        print(f"full extraction pipeline            : {ips_pipe:7.1f} images/s (decode, resize, forward, CAMs, fp16 cache write)")
        print(f"pipeline_vs_bare_onnxruntime_split: {ips_pipe / ips_split:.2f}")
        print(f"pipeline_vs_bare_onnxruntime: {ips_pipe / ips_bare:.2f}")


def main_device(args: argparse.Namespace) -> None:
    """Pipeline vs bare forward of the same torch module on a GPU."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        make_images(tmp_p / "imgs", args.n)
        os.environ.setdefault("TAGOOD_HOME", str(tmp_p / "home"))
        bb = EfficientNetLite0(device=args.device, batch_size=args.batch_size)
        src = data.FolderSource(tmp_p / "imgs")
        batch = np.stack([bb.preprocess(src.load(i)) for i in range(len(src))])
        bb.forward(batch[: args.batch_size])  # warm-up (cuDNN autotuning, allocator)
        sync = torch.cuda.synchronize if bb.device.type == "cuda" else (lambda: None)

        def bare() -> float:  # host batch in, numpy outputs out: what the pipeline's forward gets
            t = time.perf_counter()
            for a in range(0, len(batch), args.batch_size):
                bb._torch_run(batch[a : a + args.batch_size])
            return time.perf_counter() - t

        on_dev = [torch.as_tensor(batch[a : a + args.batch_size], device=bb.device).contiguous(memory_format=torch.channels_last)
                  for a in range(0, len(batch), args.batch_size)]

        def compute() -> float:  # the forward alone, inputs already on the device
            sync()
            t = time.perf_counter()
            with torch.inference_mode():
                for x in on_dev:
                    bb.module(x)
            sync()
            return time.perf_counter() - t

        from tagood.extract.pipeline import decode_batches
        from tagood.runtime.threads import decode_workers

        workers = args.workers or decode_workers()

        def decode() -> float:  # the pipeline's decode pool alone (files -> preprocessed batches)
            t = time.perf_counter()
            for _ in decode_batches(src, bb, 0, args.batch_size, workers):
                pass
            return time.perf_counter() - t

        t_dec = min(decode() for _ in range(args.repeats))
        t_comp = min(compute() for _ in range(args.repeats))
        t_bare = min(bare() for _ in range(args.repeats))
        t_pipe = min(time_pipeline(src, bb, tmp_p / f"cache{k}", args.n, args.batch_size, workers) for k in range(args.repeats))
        name = torch.cuda.get_device_name(bb.device) if bb.device.type == "cuda" else str(bb.device)
        print(f"device {name}, images: {args.n} (half JPEG photos ~300-640 px, half 28x28 PNG digits), batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs")
        print(f"decode + preprocess alone           : {args.n / t_dec:8.1f} images/s ({workers} decode threads)")
        print(f"forward alone, batch on the device  : {args.n / t_comp:8.1f} images/s")
        print(f"bare forward (host in, numpy out)   : {args.n / t_bare:8.1f} images/s")
        print(f"full extraction pipeline            : {args.n / t_pipe:8.1f} images/s "
              "(decode, resize, forward, fp16 cache write)")
        print(f"pipeline_vs_forward_alone: {t_comp / t_pipe:.2f}")
        print(f"pipeline_vs_bare_forward: {t_bare / t_pipe:.2f}")


if __name__ == "__main__":
    main()
