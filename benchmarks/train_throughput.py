"""Steady-state TagOOD projector training throughput: the real data path vs the compute-only limit (issue 13).

Data: ``--n`` (default 20,000) RAM-shaped object-token sets -- 145 token positions of width 512 (RAM's
``image_proj`` output), fp16, about 40% of the tokens kept per image with a realistic spread (kept fraction
~ Beta(2, 3): a few tokens for a small object, most of the image for a large one) -- written through
:class:`tagood.core.ragged.TokenSetSink` to disk exactly as ``TagOOD.fit`` spills a streamed training split, and
memory-mapped back. 1,000 classes (ImageNet's), the ``paper`` preset's projector (width 512, 2 blocks, MLP
2048, batch 256).

* **real**: :func:`tagood.detectors.tagood.train.train_projector` on the memory-mapped token sets (random batches
  gathered from the map each step, moved to the device: packed on the CPU, padded on accelerators, as
  :class:`tagood.detectors.tagood.projector.Projector` takes them there), stopped after ``--warmup + --steps``
  steps; samples/s over the last ``--steps`` steps.
* **baseline** (the compute-only limit): the same model, loss, optimiser, schedule and EMA update on batches
  of the same sizes and lengths that were built (packed / padded) and put on the device before the clock
  starts; on the CPU computed as the real path computes them, from the batch's parts
  (:class:`tagood.detectors.tagood.train.CpuParts`, converted to float32 beforehand).

Prints samples/s of both, the projected wall time of the paper preset on ImageNet-1K (1,281,167 images x
100 epochs) at the real path's rate, and the ratio real / baseline last (target >= 0.8).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/train_throughput.py [--device cpu|cuda] [--steps 2] [--n 20000]

On 2 CPU cores a step of the paper's shapes takes seconds, so the default times few steps; ``--device cuda``
(more ``--steps``) is where the data path matters.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tagood.core.ragged import TokenSetSink
from tagood.core.types import TokenSet
from tagood.detectors.tagood import train as train_mod
from tagood.detectors.tagood.projector import Projector
from tagood.detectors.tagood.train import PRESETS, TrainConfig, ema_update, train_projector

N_POS, DIM, CLASSES = 145, 512, 1000
IMAGENET_TRAIN = 1_281_167


def build_tokens(directory: Path, n: int, seed: int = 0, chunk: int = 2000) -> tuple[TokenSet, np.ndarray]:
    """``n`` RAM-shaped token sets written through TokenSetSink (fp16 on disk) and memory-mapped back, with labels.

    Token values are a class direction plus noise (so the loss means something); positions are a sorted random
    subset of the 145 positions per image. Reused when ``directory`` already holds the same build."""
    stamp = {"n": n, "seed": seed, "pos": N_POS, "dim": DIM, "classes": CLASSES, "v": 2}
    meta = directory / "build.json"
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    frac = rng.beta(2.0, 3.0, n)
    lengths = np.clip(np.round(frac * N_POS), 1, N_POS).astype(np.int64)
    if meta.exists() and json.loads(meta.read_text()) == stamp:
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = np.memmap(directory / "train.values.bin", dtype=np.float16, mode="r", shape=(int(offsets[-1]), DIM))
        positions = np.memmap(directory / "train.positions.bin", dtype=np.int16, mode="r", shape=(int(offsets[-1]),))
        return TokenSet(values, offsets, positions), labels
    directions = (0.5 * rng.standard_normal((CLASSES, DIM))).astype(np.float16)
    noise = rng.standard_normal((8192, DIM)).astype(np.float16)  # rows drawn from a pool: fast to build
    sink = TokenSetSink(directory, name="train", dtype=np.float16, max_position=N_POS)
    for a in range(0, n, chunk):
        lens = lengths[a : a + chunk]
        tot = int(lens.sum())
        rows = np.repeat(labels[a : a + chunk], lens)
        vals = directions[rows]
        vals += noise[rng.integers(0, len(noise), tot)]
        pos = np.concatenate([np.sort(rng.choice(N_POS, k, replace=False)) for k in lens])
        offs = np.zeros(len(lens) + 1, np.int64)
        np.cumsum(lens, out=offs[1:])
        sink.append(TokenSet(vals, offs, pos))
    ts = sink.finish()
    meta.write_text(json.dumps(stamp))
    return ts, labels


class _Stop(Exception):
    pass


def time_real(tokens: TokenSet, labels: np.ndarray, cfg: TrainConfig, device: str, warmup: int, steps: int) -> float:
    """Samples/s of ``train_projector`` over ``steps`` steps after ``warmup`` steps (its per-step progress
    callback is where the clock is read; the run is stopped after the last timed step)."""
    marks: list[tuple[float, int]] = []

    @contextmanager
    def recorder(*_: Any, **__: Any) -> Iterator[Any]:
        def advance(k: int = 1, **___: Any) -> None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), int(k)))
            if len(marks) > warmup + steps:
                raise _Stop

        yield advance

    orig = train_mod.progress_bar
    train_mod.progress_bar = recorder
    try:
        train_projector(tokens, labels, CLASSES, N_POS, cfg, device=device, progress=False)
        raise RuntimeError("train_projector finished before the timed steps were done; raise --n or lower --steps")
    except _Stop:
        pass
    finally:
        train_mod.progress_bar = orig
    (t0, _), (t1, _) = marks[warmup], marks[warmup + steps]
    return sum(k for _, k in marks[warmup + 1 : warmup + steps + 1]) / (t1 - t0)


def time_baseline(tokens: TokenSet, labels: np.ndarray, cfg: TrainConfig, device: str, warmup: int, steps: int) -> float:
    """Samples/s of the same training step on pre-built batches already on the device (on CUDA
    with the real path's bf16 autocast and fused AdamW, so both do the same arithmetic)."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1)
    model = Projector(tokens.dim, CLASSES, N_POS, cfg.dim, cfg.depth, cfg.heads, cfg.mlp, cfg.dropout).to(dev).train()
    centres = torch.randn(CLASSES, cfg.dim).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **({"fused": True} if cuda else {}))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000, eta_min=cfg.min_lr)
    parts = train_mod.CpuParts(cfg.dropout) if dev.type == "cpu" else None
    params = [p for p in model.parameters() if p.requires_grad]
    batches: list[Any] = []
    for _ in range(warmup + steps + 1):
        idx = np.sort(rng.choice(len(tokens), cfg.batch_size, replace=False))
        if parts is not None:  # each part's packed tokens, already float32
            hosts = [train_mod._host_step(tokens, labels, sub, dev) for sub in parts.split(idx)]
            batches.append([((b, w, d, v.float(), *rest), y) for (b, w, d, v, *rest), y in hosts])
        else:
            x, pos, mask = train_mod._batch(tokens, idx, dev)
            batches.append((x, pos, mask, torch.as_tensor(labels[idx], device=dev)))
    marks = []
    for batch in batches:
        if parts is not None:
            feats, logits, y, loss = parts.backward(model, params, batch, centres, cfg)
        else:
            x, pos, mask, y = batch
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                feats, logits = model(x, pos, mask)
                loss = train_mod._step_loss(feats, logits, y, centres, cfg)  # the real path's loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            ema_update(centres, feats.detach().float(), y, cfg.momentum)
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
    if parts is not None:
        parts.close()
    return steps * cfg.batch_size / (marks[warmup + steps] - marks[warmup])


def time_host(tokens: TokenSet, labels: np.ndarray, cfg: TrainConfig, device: str, steps: int) -> float:
    """Samples/s of the host side alone (gather from the memory map, page-lock on CUDA), one thread, no device
    work: the data path's own ceiling."""
    rng = np.random.default_rng(cfg.seed + 2)
    dev = torch.device(device)
    idxs = [np.sort(rng.choice(len(tokens), cfg.batch_size, replace=False)) for _ in range(steps + 1)]
    train_mod._host_step(tokens, labels, idxs[0], dev)  # warm-up
    t = time.perf_counter()
    for idx in idxs[1:]:
        train_mod._host_step(tokens, labels, idx, dev)
    return steps * cfg.batch_size / (time.perf_counter() - t)


def profile_real(tokens: TokenSet, labels: np.ndarray, cfg: TrainConfig, device: str, steps: int) -> None:
    """torch.profiler over ``steps`` steps of the real path: the ops with the most self time, host and device."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        time_real(tokens, labels, cfg, device, 2, steps)
    ka = prof.key_averages()
    print(ka.table(sort_by="self_cpu_time_total", row_limit=15))
    if device.startswith("cuda"):
        print(ka.table(sort_by="self_cuda_time_total", row_limit=15))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="token sets in the memory-mapped store (>= 20,000)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the paper preset's 256)")
    p.add_argument("--profile", type=int, default=0, help="also profile this many steps of the real path (torch.profiler)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/tagood-train-throughput"))
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = PRESETS["paper"].with_(batch_size=a.batch, epochs=1)
    t0 = time.perf_counter()
    tokens, labels = build_tokens(a.workdir, a.n)
    print(f"token store: {len(tokens)} sets, {tokens.lengths.mean():.1f} of {N_POS} tokens kept on average "
          f"(min {tokens.lengths.min()}, max {tokens.lengths.max()}), {tokens.values.nbytes / 2**30:.2f} GiB fp16, "
          f"memory-mapped from {a.workdir} (ready in {time.perf_counter() - t0:.1f} s)")
    print(f"device {a.device}, torch threads {torch.get_num_threads()}, batch {cfg.batch_size}, "
          f"{a.warmup} warm-up + {a.steps} timed steps per path")
    real = time_real(tokens, labels, cfg, a.device, a.warmup, a.steps)
    base = time_baseline(tokens, labels, cfg, a.device, a.warmup, a.steps)
    host = time_host(tokens, labels, cfg, a.device, max(a.steps, 4))
    hours = IMAGENET_TRAIN * PRESETS["paper"].epochs / real / 3600
    print(f"baseline (pre-built batches on the device):        {base:,.1f} samples/s")
    print(f"real train_projector on the memory-mapped store:    {real:,.1f} samples/s")
    print(f"host side alone (gather + page-lock, one thread):   {host:,.1f} samples/s")
    print(f"projected paper preset on ImageNet-1K ({IMAGENET_TRAIN:,} x {PRESETS['paper'].epochs} epochs) at this rate: "
          f"{hours:,.1f} h")
    if a.profile:
        profile_real(tokens, labels, cfg, a.device, a.profile)
    print(f"real / baseline: {real / base:.2f}")


if __name__ == "__main__":
    main()
