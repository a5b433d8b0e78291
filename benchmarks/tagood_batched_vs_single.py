"""Benchmark: TagOOD scoring of cached token sets, batched and masked vs one image at a time.

Token sets shaped like RAM's (145 tokens of 512 dims per image, a variable number kept after
decomposition). Ours: ``tagood.detectors.tagood.embed`` (length-sorted padded batches with key-padding
masks). Baseline, as the public TagOOD code scores: a loop over images, each its own forward with
exactly its kept tokens (batch of 1, no mask). Checks both give the same features, prints the
training throughput of the projector, and the ratio batched / single last (target >= 20x).

    python benchmarks/tagood_batched_vs_single.py [--n 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tagood.core.types import TokenSet
from tagood.detectors.tagood import Projector, embed
from tagood.detectors.tagood.train import PRESETS, train_projector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=512, help="projector width (paper: 512)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True, help="TF32 matmuls on CUDA (both paths)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lens = rng.integers(8, 146, size=args.n)  # kept tokens per image out of 145
    values = rng.normal(size=(int(lens.sum()), 512)).astype(np.float16)  # fp16, as the feature cache stores tokens
    positions = np.concatenate([np.sort(rng.choice(145, size=k, replace=False)) for k in lens])
    ts = TokenSet(values, np.r_[0, np.cumsum(lens)], positions)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    model = Projector(512, 1000, 145, dim=args.dim, mlp=4 * args.dim, dropout=0.0).to(dev).eval()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    embed(model, ts.select(np.arange(min(256, args.n))), batch_size=256, device=args.device)  # warm-up

    sync()
    t = time.perf_counter()
    batched, _ = embed(model, ts, batch_size=args.batch_size, device=args.device)
    sync()
    t_batched = time.perf_counter() - t

    single = np.zeros_like(batched)
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(args.n):
            v, p = ts.get(i)
            f = model.features(torch.as_tensor(v, device=dev).float()[None], torch.as_tensor(p, device=dev)[None],
                               torch.ones(1, len(v), dtype=torch.bool, device=dev))
            single[i] = f[0].cpu().numpy()
    sync()
    t_single = time.perf_counter() - t
    err = float(np.abs(batched - single).max())
    tol = 1e-2 if (dev.type == "cuda" and args.tf32) else 1e-3  # TF32 rounds matmul inputs to 10-bit mantissas
    if err > tol:
        raise SystemExit(f"batched and single features differ by {err}")

    labels = rng.integers(0, 1000, size=args.n)
    cfg = PRESETS["paper"].with_(epochs=1, dim=args.dim, mlp=4 * args.dim)
    t = time.perf_counter()
    train_projector(ts, labels, 1000, 145, cfg, device=args.device, progress=False)
    sync()
    t_train = time.perf_counter() - t

    print(f"device {dev} (tf32 {args.tf32 and dev.type == 'cuda'}), batch {args.batch_size}, {args.n} images, "
          f"{lens.mean():.0f} kept tokens/image on average, projector dim {args.dim}, max |diff| {err:.1e}")
    print(f"single (public-code style): {args.n / t_single:8.1f} images/s")
    print(f"batched + masked          : {args.n / t_batched:8.1f} images/s")
    print(f"one training epoch, cold  : {args.n / t_train:8.1f} samples/s (batch 256, model build and warm-up included; "
          "steady state: benchmarks/train_throughput.py)")
    print(f"batched_vs_single: {t_single / t_batched:.1f}x")


if __name__ == "__main__":
    main()
