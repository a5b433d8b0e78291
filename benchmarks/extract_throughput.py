"""Benchmark: images/s of the extraction pipeline against its own stages.

Images: a folder of real image files (JPEG photos from scikit-learn at their native 427x640 and random crops
of them, 28x28 scikit-learn digits as PNG).

``--backbone free`` (the default): a near-free backbone (EfficientNet-Lite0's preprocessing: decode, resize +
crop to 224, normalise; its forward is each image's channel means, ~nothing), so the pipeline
(``tagood.extract.extract_split``: decode, forward, cache write) is timed against decoding alone
(``tagood.extract.pipeline.decode_batches``: files -> preprocessed batches, nothing else) with the same number of
decode workers of the same kind (processes by default, ``--decode threads`` for the thread pool). Also shown: both
with the other kind. Prints ``pipeline_vs_decode_alone`` last (goal >= 0.9: the pipeline keeps up with its slower
stage, here decoding).

``--backbone lite0``: the full pipeline with EfficientNet-Lite0 (all outputs: logits, features, 49 tokens, top-10
CAMs, block norms) against bare onnxruntime on the same model and batch (exported to ONNX here, run on the
already-preprocessed images, one ``run`` per batch with all threads) and the same bare forward with the
backbone's own engine threading (each batch split over the cores). Prints ``pipeline_vs_bare_onnxruntime`` last
(target >= 0.8).

``--device cuda``: EfficientNet-Lite0 through torch on the GPU; shown are decoding alone, the forward alone (host
batch in, numpy outputs back, as the pipeline gets them; and on a batch already on the GPU) and the pipeline.
Prints ``pipeline_vs_slower_stage`` last: pipeline / min(decode alone, forward alone).

    python benchmarks/extract_throughput.py [--quick] [--n 512] [--batch-size 64] [--workers W]
        [--decode processes|threads] [--backbone free|lite0] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

from tagood import data
from tagood.backbones.efficientnet import (
    LITE0,
    EfficientNetLite,
    EfficientNetLite0,
    Lite0Features,
    export_onnx,
    load_lite0,
)
from tagood.core.types import ModelOutput
from tagood.extract import extract_split
from tagood.extract.pipeline import decode_batches
from tagood.runtime.machine import cpu_model
from tagood.runtime.threads import decode_workers


class FreeBackbone:
    """A near-free backbone for timing the pipeline against decoding: EfficientNet-Lite0's preprocessing, and a
    forward that returns each image's channel means (``features (B, 3)``). Benchmark only."""

    id = "free-channel-means"
    weights_hash = "none"
    transform_id = LITE0.transform_id
    outputs = ("features",)
    variant = LITE0
    _crop_box = EfficientNetLite._crop_box
    preprocess = EfficientNetLite.preprocess

    def forward(self, batch: np.ndarray) -> ModelOutput:
        return ModelOutput(features=batch.mean(axis=(2, 3)))


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


def time_pipeline(src: data.FolderSource, bb: Any, cache: Path, n: int, batch_size: int,
                  workers: int | None = None, kind: str | None = None) -> float:
    """Seconds of one full extraction of ``src`` into a new cache entry under ``cache`` (``kind``: the decode
    workers' kind, ``None``: the default)."""
    saved = os.environ.get("TAGOOD_DECODE")
    if kind is not None:
        os.environ["TAGOOD_DECODE"] = kind
    try:
        t = time.perf_counter()
        r = extract_split(src, bb, cache, split="bench", batch_size=batch_size, progress=False, workers=workers)
        dt = time.perf_counter() - t
    finally:
        if saved is None:
            os.environ.pop("TAGOOD_DECODE", None)
        else:
            os.environ["TAGOOD_DECODE"] = saved
    assert len(r) == n
    return dt


def time_decode(src: data.FolderSource, bb: Any, batch_size: int, workers: int, kind: str | None = None) -> float:
    """Seconds to decode and preprocess every image of ``src`` in the pipeline's decode pool, nothing else."""
    t = time.perf_counter()
    for _ in decode_batches(src, bb, 0, batch_size, workers, kind=kind):
        pass
    return time.perf_counter() - t


def main_free(args: argparse.Namespace) -> None:
    """Pipeline vs decoding alone with a near-free backbone, same workers, same kind."""
    workers = args.workers or decode_workers()
    kinds = [args.decode] + ([] if args.quick else [k for k in ("processes", "threads") if k != args.decode])
    with tempfile.TemporaryDirectory(prefix="extract-throughput-") as tmp:
        tmp_p = Path(tmp)
        make_images(tmp_p / "imgs", args.n)
        src = data.FolderSource(tmp_p / "imgs")
        bb = FreeBackbone()
        dec = {k: float("inf") for k in kinds}
        pipe = {k: float("inf") for k in kinds}
        for r in range(args.repeats):  # interleaved, best of each
            for k in kinds:
                dec[k] = min(dec[k], time_decode(src, bb, args.batch_size, workers, k))
                pipe[k] = min(pipe[k], time_pipeline(src, bb, tmp_p / f"cache-{k}-{r}", args.n, args.batch_size,
                                                     workers, k))
        print(f"images: {args.n} (half JPEG photos ~300-640 px, half 28x28 PNG digits) -> 224x224, batch "
              f"{args.batch_size}, {workers} decode workers, near-free backbone (channel means), "
              f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} CPUs")
        for k in reversed(kinds):
            print(f"decode + preprocess alone ({k:9s}): {args.n / dec[k]:8.1f} images/s")
            print(f"full pipeline             ({k:9s}): {args.n / pipe[k]:8.1f} images/s (decode, forward, cache write)")
        if len(kinds) > 1:
            print(f"pipeline_{args.decode}_vs_pipeline_{kinds[1]}: {pipe[kinds[1]] / pipe[args.decode]:.2f}")
        if args.json:
            import json
            import platform

            out = {"benchmark": "extract_throughput", "command": " ".join(["python", "benchmarks/extract_throughput.py",
                                                                          *sys.argv[1:]]),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "machine": {"platform": platform.platform(), "processor": cpu_model(),
                               "cpus": os.cpu_count()},
                   "images": args.n, "batch_size": args.batch_size, "workers": workers, "repeats": args.repeats,
                   "backbone": "near-free (channel means)", "decode": args.decode,
                   "images_per_s": {k: {"decode_alone": args.n / dec[k], "pipeline": args.n / pipe[k]} for k in kinds},
                   "pipeline_vs_decode_alone": dec[args.decode] / pipe[args.decode]}
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"pipeline_vs_decode_alone: {dec[args.decode] / pipe[args.decode]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="64 images, batch 16, one repeat, one decode kind: a check")
    ap.add_argument("--backbone", choices=("free", "lite0"), default="free",
                    help="free: near-free backbone, pipeline vs decoding alone (default); lite0: vs bare onnxruntime")
    ap.add_argument("--decode", choices=("processes", "threads"), default="processes", help="decode workers' kind")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads for both paths (default: all cores)")
    ap.add_argument("--device", default="cpu", help="cpu (onnxruntime engine) or cuda (torch engine)")
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: the pipeline's own choice)")
    ap.add_argument("--json", default=None, help="near-free mode: write the figures here")
    args = ap.parse_args()
    if args.quick:
        args.n, args.batch_size, args.repeats = min(args.n, 64), min(args.batch_size, 16), 1
    os.environ["TAGOOD_DECODE"] = args.decode
    if args.device != "cpu":
        return main_device(args)
    if args.backbone == "free":
        return main_free(args)
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

        workers = args.workers or decode_workers()
        t_dec = min(time_decode(src, bb, args.batch_size, workers, args.decode) for _ in range(args.repeats))
        t_comp = min(compute() for _ in range(args.repeats))
        t_bare = min(bare() for _ in range(args.repeats))
        t_pipe = min(time_pipeline(src, bb, tmp_p / f"cache{k}", args.n, args.batch_size, workers, args.decode)
                     for k in range(args.repeats))
        name = torch.cuda.get_device_name(bb.device) if bb.device.type == "cuda" else str(bb.device)
        print(f"device {name}, images: {args.n} (half JPEG photos ~300-640 px, half 28x28 PNG digits), batch {args.batch_size}, "
              f"{os.cpu_count()} CPUs")
        print(f"decode + preprocess alone           : {args.n / t_dec:8.1f} images/s ({workers} decode {args.decode})")
        print(f"forward alone, batch on the device  : {args.n / t_comp:8.1f} images/s")
        print(f"forward alone (host in, numpy out)  : {args.n / t_bare:8.1f} images/s")
        print(f"full extraction pipeline            : {args.n / t_pipe:8.1f} images/s "
              "(decode, resize, forward, fp16 cache write)")
        print(f"pipeline_vs_forward_on_device: {t_comp / t_pipe:.2f}")
        print(f"pipeline_vs_bare_forward: {t_bare / t_pipe:.2f}")
        print(f"pipeline_vs_decode_alone: {t_dec / t_pipe:.2f}")
        print(f"pipeline_vs_slower_stage: {max(t_dec, t_bare) / t_pipe:.2f}")


if __name__ == "__main__":
    main()
