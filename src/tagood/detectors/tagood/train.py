"""Training the projector with EMA class centres (TagOOD paper, section 3.4, Eq. 3-5).

Loss = ce_weight * CE(logits, y) + mse_weight * MSE(feature, centre[y]) from **one** forward pass
per step; centres are Gaussian-initialised buffers without gradient, updated after each step by an
exponential moving average with the **mean** of the batch's features of each class (a class that
appears several times in a batch contributes all its samples). AdamW, cosine annealing per step,
seeded. The options (:class:`~tagood.detectors.tagood.config.TrainConfig`) and presets live in
:mod:`tagood.detectors.tagood.config`.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tagood.core.types import TokenSet
from tagood.detectors.tagood.config import DETECTOR_PRESETS, PRESETS, TrainConfig
from tagood.detectors.tagood.projector import Projector, runs_packed
from tagood.runtime.progress import progress_bar

__all__ = ["CPU_PARTS", "DETECTOR_PRESETS", "PRESETS", "CpuParts", "TrainConfig", "embed", "embed_features", "ema_update",
           "pad_multiple", "train_projector"]

log = logging.getLogger(__name__)


def ema_update(centres: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, momentum: float,
               reduce: Any = None) -> None:
    """centres[c] <- m * centres[c] + (1 - m) * mean(feats[labels == c]) for every class c in the batch (in place).

    Args:
        centres: ``(C, dim)`` the class centres, updated in place.
        feats: ``(B, dim)`` the batch's features.
        labels: ``(B,)`` their class ids.
        momentum: ``m`` (TagOOD paper Eq. 4).
        reduce: a function summing a tensor over the ranks of a torchrun world in place (all-reduce); the
            class sums and counts are reduced before the means are taken, so every rank applies the update of the
            whole global batch and holds the same centres.
    """
    c = centres.shape[0]
    sums = torch.zeros_like(centres).index_add_(0, labels, feats.to(centres.dtype))
    counts = torch.bincount(labels, minlength=c).to(centres.dtype)
    if reduce is not None:
        reduce(sums)
        reduce(counts)
    # no boolean indexing: it waits for the device (a host sync in every CUDA step); classes absent from the
    # batch get weights (1, 0), so they keep their centre exactly, and present ones get the same products as
    # ``m * c + (1 - m) * mean``
    present = (counts > 0)[:, None]
    keep = torch.where(present, momentum, 1.0).to(centres.dtype)
    take = torch.where(present, 1.0 - momentum, 0.0).to(centres.dtype)
    means = sums / counts.clamp(min=1)[:, None]
    centres.copy_(keep * centres + take * means)


def pad_multiple(device: torch.device) -> int:
    """What a padded batch's width is rounded up to on ``device``: 16 on CUDA, 1 (the longest set) elsewhere.

    On CUDA every new sequence length makes the attention kernels plan afresh (cuDNN's SDPA builds an execution
    plan per shape; measured on an H200: 50-80 ms steps until the ~15 widths of RAM-shaped batches were all
    seen, vs ~10 ms of device time per step); multiples of 16 leave a handful of shapes. The padding is masked,
    so features do not change."""
    return 16 if device.type == "cuda" else 1


def _host_batch(tokens: TokenSet, idx: np.ndarray, pin: bool = False, multiple: int = 1) -> tuple[Any, ...]:
    """The host side of a padded batch: kept tokens of samples ``idx`` gathered (one fancy-index; a contiguous
    run of samples is a slice of the memory-mapped cache, no copy), with their rows and columns in the padded
    tensor. ``pin``: in page-locked memory, so the device copy is asynchronous (CUDA); ``multiple``: round the
    padded width up to a multiple of this (:func:`pad_multiple`)."""
    lens = tokens.lengths[idx]
    b, width = len(idx), int(lens.max()) if len(idx) else 0
    width = -(-width // multiple) * multiple
    starts = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(lens, out=starts[1:])
    col = np.arange(starts[-1], dtype=np.int64) - np.repeat(starts[:-1], lens)
    row = np.repeat(np.arange(b, dtype=np.int64), lens)
    contiguous = b > 0 and idx[-1] - idx[0] == b - 1 and np.all(np.diff(idx) == 1)
    if contiguous:  # a slice of the memory-mapped cache: no host copy at all
        lo = tokens.offsets[idx[0]]
        host = tokens.values[lo : lo + starts[-1]]
        pos_host = tokens.positions[lo : lo + starts[-1]]
    else:
        src = np.repeat(tokens.offsets[idx], lens) + col
        host, pos_host = tokens.values[src], tokens.positions[src]  # stored dtype (fp16 from the cache): half the bytes
    vals, pos_v = torch.as_tensor(np.ascontiguousarray(host)), torch.as_tensor(np.ascontiguousarray(pos_host))
    r, c = torch.as_tensor(row), torch.as_tensor(col)
    if pin:
        vals, pos_v, r, c = (t.pin_memory() for t in (vals, pos_v, r, c))
    return b, width, tokens.dim, vals, pos_v, r, c


def _host_step(tokens: TokenSet, labels: np.ndarray, idx: np.ndarray,
               device: torch.device) -> tuple[tuple[Any, ...], torch.Tensor]:
    """One training step's host data for ``device``: :func:`_host_batch` and the labels (page-locked on CUDA)."""
    pin = device.type == "cuda"
    y = torch.as_tensor(labels[idx])
    return _host_batch(tokens, idx, pin, pad_multiple(device)), (y.pin_memory() if pin else y)


def _device_batch(host: tuple[Any, ...], device: torch.device,
                  packed: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move a :func:`_host_batch` in one transfer per array; returns ``(tokens, positions, mask)``.

    ``packed`` (default: on the CPU, where :class:`Projector` runs packed): the real tokens ``(T,D)`` and their
    positions ``(T,)`` as gathered, in row-major order of ``mask`` (no padded copy at all); else scattered into
    padded ``(B,L,D)`` / ``(B,L)`` tensors on ``device``."""
    b, width, dim, vals, pos_v, r, c = host
    vals = vals.to(device, non_blocking=True).float()
    pos_v = pos_v.to(device, non_blocking=True)
    r, c = r.to(device, non_blocking=True), c.to(device, non_blocking=True)
    mask = torch.zeros(b, width, dtype=torch.bool, device=device)
    mask[r, c] = True
    if packed is None:
        packed = runs_packed(device)
    if packed:
        return vals, pos_v.long(), mask
    x = torch.zeros(b, width, dim, dtype=torch.float32, device=device)
    pos = torch.zeros(b, width, dtype=torch.long, device=device)
    x[r, c] = vals
    pos[r, c] = pos_v.long()
    return x, pos, mask


def _batch(tokens: TokenSet, idx: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of samples ``idx`` on ``device`` for :class:`Projector` (packed on the CPU, padded elsewhere): the
    kept tokens are gathered on the host (one fancy-index), moved in one transfer and, off the CPU, scattered into
    the padded tensor on the device."""
    return _device_batch(_host_batch(tokens, idx, multiple=pad_multiple(torch.device(device))), device)


#: How many parts a CPU training step's batch is cut into (contiguous, as :func:`tagood.runtime.distributed.split_range`
#: cuts a global batch among ranks). Each part's forward and backward run with single-thread operators on a
#: worker thread of their own (a budget of 2 threads: both at once), their gradients are summed in part order, and
#: one optimizer step follows (:class:`CpuParts`). Fixed, not the thread budget, so without dropout the arithmetic
#: -- and every trained result -- is the same for budgets of 1 to 3 threads (with one, the parts run in turn) and
#: whatever the load; from 4 threads each part's operators get ``budget // 2`` threads, which rounds differently
#: (measured: ~1e-9 relative after two epochs).
#:
#: Why not torch's intra-op threads on the whole batch: each operator of a step then ends at a barrier where the
#: threads wait for each other, and on a shared machine one of them has often lost its core (beside two 2-thread
#: processes on 2 cores, ``benchmarks/projector_data_parallel.py``: 313 ms per step vs 167 ms for the two parts).
CPU_PARTS = 2


def _step_loss(feats: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, centres: torch.Tensor,
               cfg: TrainConfig) -> torch.Tensor:
    """CE + MSE to the class centres (paper Eq. 5): means over the samples of ``y``."""
    loss = cfg.ce_weight * F.cross_entropy(logits.float(), y)
    if cfg.mse_weight:
        loss = loss + cfg.mse_weight * F.mse_loss(feats.float(), centres[y])
    return loss


def _part_grads(net: torch.nn.Module, params: list[torch.nn.Parameter], host: tuple[Any, ...], y: torch.Tensor,
                centres: torch.Tensor, cfg: TrainConfig, weight: float,
                threads: int) -> tuple[list[torch.Tensor | None], torch.Tensor, torch.Tensor, torch.Tensor]:
    """One part of a CPU step: forward, ``weight`` x its mean loss (``weight``: the part's share of the batch, so
    the parts' losses sum to the batch's mean loss) and the gradients of that, with ``threads`` intra-op
    threads in this thread. Returns (gradients, features, logits, weighted loss); nothing is written to
    ``.grad``, so parts may run at once on different threads."""
    torch.set_num_threads(threads)  # this thread's own OpenMP setting
    x, pos, mask = _device_batch(host, torch.device("cpu"))
    feats, logits = net(x, pos, mask)
    loss = weight * _step_loss(feats, logits, y, centres, cfg)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return list(grads), feats.detach(), logits.detach(), loss.detach()


class CpuParts:
    """How a CPU training step computes its gradients (:data:`CPU_PARTS`): :meth:`split` cuts a batch's indices
    into the parts, :meth:`backward` runs the parts' forward and backward passes -- on threads of their own with
    ``budget // parts`` operator threads each when the budget has a thread per part and the model draws nothing
    random (dropout's masks come from torch's one global generator: parts at once would draw them in a varying
    order), else in turn with the whole budget -- and sums their gradients into ``.grad`` in part order.
    A context manager: leaving it stops the threads and restores the process's thread budget."""

    def __init__(self, dropout: float, parts: int | None = None) -> None:
        self.parts = CPU_PARTS if parts is None else parts
        self.budget = torch.get_num_threads()
        self.concurrent = self.parts > 1 and self.budget >= self.parts and dropout == 0
        self.threads = max(1, self.budget // self.parts) if self.concurrent else self.budget
        self._pool = ThreadPoolExecutor(self.parts, thread_name_prefix="tagood-parts") if self.concurrent else None

    def __enter__(self) -> CpuParts:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        torch.set_num_threads(self.budget)  # a part's setting also became the default of threads started later

    def split(self, idx: np.ndarray) -> list[np.ndarray]:
        """The parts of a batch's indices, contiguous and in order (as ranks share a global batch)."""
        from tagood.runtime.distributed import split_range

        return [idx[a:b] for a, b in (split_range(len(idx), self.parts, k) for k in range(self.parts)) if b > a]

    def backward(self, net: torch.nn.Module, params: list[torch.nn.Parameter],
                 hosts: list[tuple[tuple[Any, ...], torch.Tensor]], centres: torch.Tensor,
                 cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gradients of the batch whose parts are ``hosts`` (:func:`_host_step` of each part) into ``.grad``;
        returns the batch's detached (features, logits, labels, mean loss), rows in batch order."""
        n = sum(len(y) for _, y in hosts)
        jobs = [(net, params, host, y, centres, cfg, len(y) / n, self.threads) for host, y in hosts]
        done = list(self._pool.map(lambda job: _part_grads(*job), jobs)) if self._pool else [_part_grads(*j) for j in jobs]
        for k, p in enumerate(params):
            p.grad = None
            for grads, *_ in done:
                g = grads[k]
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
        feats, logits = torch.cat([d[1] for d in done]), torch.cat([d[2] for d in done])
        return feats, logits, torch.cat([y for _, y in hosts]), torch.stack([d[3] for d in done]).sum()


def train_projector(tokens: TokenSet, labels: np.ndarray, num_classes: int, num_positions: int, cfg: TrainConfig,
                    device: str = "cpu", progress: bool = True) -> tuple[Projector, torch.Tensor, list[dict[str, float]]]:
    """Train a projector on object token sets; returns (model in eval mode, EMA centres (C,dim), per-epoch history).

    The data path keeps the device busy: the next batch is gathered from the (memory-mapped) token store by a
    background thread while the current step runs (on CUDA: four batches ahead by two threads, into page-locked
    memory), and the loss and accuracy are summed on the device and read once per epoch (no host
    synchronisation per step; the EMA update has none either). On CUDA the forward
    pass and the loss run under bf16 autocast and AdamW is the fused kernel. On the CPU each batch is cut into
    :data:`CPU_PARTS` contiguous parts whose gradients are computed on threads of their own and summed in part
    order: plain float32, deterministic for a seed and, without dropout, the same bits for thread budgets of 1 to 3
    and whatever the machine's load (see :data:`CPU_PARTS`).

    Under torchrun (:mod:`tagood.runtime.distributed`, a process group of ``WORLD_SIZE`` > 1) every rank draws the same
    global batches of ``cfg.batch_size`` and trains on its contiguous share of each through DDP (gradients
    averaged, losses weighted by the share's size, so the update is the global batch's); the EMA centres are
    updated from class sums and counts all-reduced across the ranks, so every rank holds identical centres.
    Without dropout this equals one process training on the same global batches up to float rounding
    (dropout masks are drawn per rank).

    Args:
        tokens: the object tokens of each training image (a ragged, possibly memory-mapped, token set).
        labels: their IND class ids ``0..num_classes-1``.
        num_classes: the number of IND classes.
        num_positions: the number of token positions (the position embedding's size, without the CLS token).
        cfg: the training options and seed.
        device: the torch device.
        progress: show a progress bar (rank 0 only).
    Returns:
        ``(projector in eval mode, EMA centres (C, dim) on device, per-epoch history)``; the history's rows hold
        ``epoch``, ``loss``, ``train_acc`` and ``lr``.
    """
    from tagood.runtime import distributed

    dev = torch.device(device)
    w = distributed.init(device) if distributed.world().distributed else distributed.world()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = Projector(tokens.dim, num_classes, num_positions, cfg.dim, cfg.depth, cfg.heads, cfg.mlp, cfg.dropout).to(dev)
    centres = torch.randn(num_classes, cfg.dim, generator=gen).to(dev)
    y_all = np.asarray(labels, dtype=np.int64)
    n = len(y_all)
    steps_per_epoch = max(1, (n + cfg.batch_size - 1) // cfg.batch_size)
    cuda = dev.type == "cuda"
    # fused AdamW on CUDA; elsewhere None, torch's default (an explicit False would also turn off its foreach default)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True if cuda else None)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch, eta_min=cfg.min_lr)
    net: torch.nn.Module = model
    reduce = None
    if w.distributed:
        import torch.distributed as dist

        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if cuda else None)

        def reduce(t: torch.Tensor) -> None:
            dist.all_reduce(t)

    history: list[dict[str, float]] = []

    def share(idx: np.ndarray) -> np.ndarray:
        a, b = distributed.split_range(len(idx), w.size, w.rank)
        return idx[a:b]

    # CPU, one process: each batch's gradients from its parts (CpuParts); else one forward pass of the whole share
    cpu_parts = CpuParts(cfg.dropout) if dev.type == "cpu" and not w.distributed else None
    params = [p for p in model.parameters() if p.requires_grad]

    def gather(idx: np.ndarray) -> list[tuple[tuple[Any, ...], torch.Tensor]]:
        return [_host_step(tokens, y_all, sub, dev) for sub in (cpu_parts.split(idx) if cpu_parts else [idx])]

    # CUDA: a step takes milliseconds and the main thread holds the GIL launching kernels, so batches are gathered
    # several steps ahead by two threads; CPU: one batch ahead (the step itself is the cost)
    depth, gatherers = (4, 2) if cuda else (1, 1)
    pool = ThreadPoolExecutor(max_workers=gatherers, thread_name_prefix="tagood-batches")
    try:
        with progress_bar("train TagOOD projector", total=cfg.epochs * n, enabled=progress and w.is_main,
                          unit="samples") as advance:
            for epoch in range(cfg.epochs):
                model.train()
                order = torch.randperm(n, generator=gen).numpy()
                steps = [order[s * cfg.batch_size : (s + 1) * cfg.batch_size] for s in range(steps_per_epoch)]
                tot = torch.zeros((), dtype=torch.float64, device=dev)
                correct = torch.zeros((), dtype=torch.int64, device=dev)
                seen = 0
                # the next batches are gathered while this step computes (in order: futures are taken in order)
                ahead = deque(pool.submit(gather, share(steps[k])) for k in range(min(depth, len(steps))))
                for s, gidx in enumerate(steps):
                    idx = share(gidx)
                    hosts = ahead.popleft().result()
                    if s + depth < len(steps):
                        ahead.append(pool.submit(gather, share(steps[s + depth])))
                    if cpu_parts is not None:
                        feats, logits, y, loss = cpu_parts.backward(net, params, hosts, centres, cfg)
                    else:
                        ((host, y_host),) = hosts
                        x, pos, mask = _device_batch(host, dev)
                        y = y_host.to(dev, non_blocking=True)
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                            feats, logits = net(x, pos, mask)  # the one forward pass of this step
                            loss = _step_loss(feats, logits, y, centres, cfg)
                        # DDP averages the ranks' gradients: weight each rank's mean loss by its share of the batch
                        step_loss = loss * (len(idx) * w.size / len(gidx)) if w.distributed else loss
                        opt.zero_grad(set_to_none=True)
                        step_loss.backward()
                    opt.step()
                    sched.step()
                    with torch.no_grad():
                        ema_update(centres, feats.detach().float(), y, cfg.momentum, reduce)
                        tot += loss.detach().double() * len(idx)
                        correct += (logits.argmax(1) == y).sum()
                    seen += len(idx)
                    last = s + 1 == len(steps)
                    info = {"loss": float(tot) / seen} if not cuda or last else {}  # a host sync: once an epoch on CUDA
                    advance(len(gidx), epoch=f"{epoch + 1}/{cfg.epochs}", **info)
                stats = torch.stack([tot, correct.double(), torch.tensor(float(seen), dtype=torch.float64, device=dev)])
                if reduce is not None:
                    reduce(stats)
                tot_v, correct_v, seen_v = (float(v) for v in stats.cpu())
                history.append({"epoch": epoch + 1, "loss": tot_v / seen_v, "train_acc": correct_v / seen_v,
                                "lr": float(opt.param_groups[0]["lr"])})
                log.debug("epoch %d loss %.4f acc %.3f", epoch + 1, tot_v / seen_v, correct_v / seen_v)
    finally:
        pool.shutdown(wait=True)
        if cpu_parts is not None:
            cpu_parts.close()
    if history:
        log.info("projector trained: %d epochs, final loss %.4f, train acc %.3f", cfg.epochs, history[-1]["loss"],
                 history[-1]["train_acc"])
    return model.eval(), centres, history


@torch.inference_mode()
def embed(model: Projector, tokens: TokenSet, batch_size: int = 512, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Projected features (N,dim) and class logits (N,C) of every token set; batched and masked.

    On CPU samples are sorted by length so padding costs little compute; on an accelerator, where
    moving tokens is the cost and padding is nearly free, batches are contiguous slices of the
    (memory-mapped) token array, moved without a host copy. Results are in input order.

    Args:
        model: a trained projector.
        tokens: the (object) token sets of ``N`` images.
        batch_size: images per forward pass.
        device: the torch device.
    Returns:
        ``(features (N, dim), logits (N, C))``, float32.
    """
    logits = np.zeros((len(tokens), int(model.config["num_classes"])), dtype=np.float32)
    return _embed_into(model, tokens, batch_size, device, logits), logits


@torch.inference_mode()
def embed_features(model: Projector, tokens: TokenSet, batch_size: int = 512, device: str = "cpu") -> np.ndarray:
    """The projected features of :func:`embed` alone, without its ``(N, C)`` logits (1.28M x 1000 float32 is 5 GB
    for ImageNet's training split): the same numbers, in memory that grows with ``dim`` only.

    Args:
        model: a trained projector.
        tokens: the (object) token sets of ``N`` images.
        batch_size: images per forward pass.
        device: the torch device.
    Returns:
        ``(N, dim)`` float32 features, in input order.
    """
    return _embed_into(model, tokens, batch_size, device, None)


def _embed_into(model: Projector, tokens: TokenSet, batch_size: int, device: str, logits: np.ndarray | None) -> np.ndarray:
    """The features of :func:`embed` (returned), writing its logits into ``logits`` when given."""
    model.eval()
    dev = torch.device(device)
    order = np.argsort(tokens.lengths, kind="stable") if dev.type == "cpu" else np.arange(len(tokens))
    feats = np.zeros((len(tokens), int(model.config["dim"])), dtype=np.float32)
    for a in range(0, len(order), batch_size):
        idx = order[a : a + batch_size]
        x, pos, mask = _batch(tokens, idx, dev)
        f, lg = model(x, pos, mask)
        feats[idx] = f.float().cpu().numpy()
        if logits is not None:
            logits[idx] = lg.float().cpu().numpy()
    return feats

