"""torchrun / SLURM: rank and world size from torch.distributed's environment, and the collective steps
tagood needs (barrier, broadcast of a decision, ordered gather of per-rank results).

``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT ...] -m tagood extract|bench|fit ...``
sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`world` reads
them and :func:`init` joins the process group once (``gloo`` on CPU; ``nccl`` when the process drives a
CUDA device, with a second ``gloo`` group for the host-side steps such as barriers and object gathers).
Without those variables everything here is the single-process identity: rank 0 of a world of 1, no
process group, no communication.

The group's timeout (``$TAGOOD_DIST_TIMEOUT`` seconds, default 4 hours) bounds how long a barrier waits
for the slowest rank: extraction of an ImageNet-sized part takes hours on one GPU.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")

_STATE: dict[str, Any] = {"cpu_group": None, "initialised_here": False}


@dataclass(frozen=True)
class World:
    """Where this process stands: its ``rank`` among ``size`` processes and ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """Rank, world size and local rank from torch.distributed's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, as torchrun sets them; SLURM's ``srun`` users export them from ``SLURM_PROCID`` /
    ``SLURM_NTASKS`` / ``SLURM_LOCALID``, see docs/guides/distributed.md). An initialised process group wins over the
    environment."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"RANK={rank} / WORLD_SIZE={size} from the environment are inconsistent; launch with torchrun")
    return World(rank, size, int(os.environ.get("LOCAL_RANK", "0") or 0))


def local_device(device: str) -> str:
    """``cuda`` under a multi-process world -> ``cuda:LOCAL_RANK`` (one GPU per process, torchrun's convention);
    anything else unchanged."""
    w = world()
    if w.distributed and device == "cuda":
        return f"cuda:{w.local_rank}"
    return device


def _timeout() -> _dt.timedelta:
    return _dt.timedelta(seconds=float(os.environ.get("TAGOOD_DIST_TIMEOUT", 4 * 3600)))


def init(device: str = "cpu") -> World:
    """Join the process group of a multi-process world (once); returns :func:`world`. A no-op in a world of 1."""
    w = world()
    if not w.distributed:
        return w
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(w.local_rank)
        dist.init_process_group(backend=backend, timeout=_timeout())
        _STATE["initialised_here"] = True
        # leave the group before the interpreter tears down (see _leave)
        atexit.register(_leave)
        log.info("joined a torch.distributed world: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    if _STATE["cpu_group"] is None:
        _STATE["cpu_group"] = (dist.new_group(backend="gloo", timeout=_timeout()) if dist.get_backend() != "gloo"
                               else dist.group.WORLD)
    return world()


def _leave() -> None:
    """Leave the process group while the interpreter is still whole (``atexit``).

    Gloo's worker threads release each finished collective's tensors themselves, which takes the GIL; one that
    does so after the interpreter has begun finalising aborts the process ("terminate called without an active
    exception") although all its work is done. ``destroy_process_group`` frees the groups, and freeing a gloo
    group joins its threads, but only once nothing else holds it: the reference kept in ``_STATE`` goes first, and
    a collection frees what unreachable cycles still hold (a finished DDP wrapper references its group).
    """
    import gc

    import torch.distributed as dist

    _STATE["cpu_group"] = None
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer already gone: nothing left to release cleanly
            log.debug("destroy_process_group at exit failed", exc_info=True)


def _group() -> Any:
    init()
    return _STATE["cpu_group"]


def barrier() -> None:
    """Wait for every rank (host-side, gloo); a no-op in a world of 1."""
    if world().distributed:
        import torch.distributed as dist

        dist.barrier(group=_group())


def broadcast(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects); the identity in a world of 1."""
    if not world().distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_group())
    return box[0]


#: Arrays are broadcast in pieces of at most this many bytes (gloo handles one buffer per message).
_PIECE = 1 << 28


def broadcast_arrays(arrays: dict[str, np.ndarray] | None, src: int = 0) -> dict[str, np.ndarray]:
    """Rank ``src``'s named arrays on every rank, bit-exact (their dtype and shape kept); the identity in a world
    of 1. The other ranks pass ``None`` (or anything: only ``src``'s value is read).

    The names, dtypes and shapes go first (one small object broadcast), then each array's bytes as a tensor
    broadcast in pieces of at most 256 MiB, received into an array allocated once: no pickled copy of a large
    array on any rank (a fitted KNN bank of ImageNet features is several GB), and ``src`` sends from its own
    memory without a copy when the array is C-contiguous and writable."""
    if not world().distributed:
        return dict(arrays or {})
    import torch
    import torch.distributed as dist

    me = world().rank
    if me == src:
        mine = {str(k): np.asarray(v) for k, v in (arrays or {}).items()}
        layout: list[tuple[str, str, tuple[int, ...]]] = [(k, v.dtype.str, tuple(v.shape)) for k, v in mine.items()]
    else:
        layout = []
    layout = broadcast(layout, src)
    out: dict[str, np.ndarray] = {}
    for name, dtype, shape in layout:
        if me == src:
            a = mine[name]
            if not (a.flags.c_contiguous and a.flags.writeable):
                a = np.ascontiguousarray(a).copy()
        else:
            a = np.empty(shape, dtype=np.dtype(dtype))
        flat = a.reshape(-1).view(np.uint8)
        for start in range(0, flat.nbytes, _PIECE):
            dist.broadcast(torch.from_numpy(flat[start:start + _PIECE]), src=src, group=_group())
        out[name] = mine[name] if me == src else a
    return out


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank; ``[obj]`` in a world of 1."""
    w = world()
    if not w.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj, group=_group())
    return out


def split_range(n: int, parts: int, rank: int, align: int = 1) -> tuple[int, int]:
    """The ``rank``-th of ``parts`` contiguous, disjoint ranges covering ``[0, n)``, their boundaries multiples
    of ``align`` (the last one ends at ``n``); sizes differ by at most one ``align`` block."""
    if parts < 1 or not 0 <= rank < parts or align < 1 or n < 0:
        raise ValueError(f"split_range(n={n}, parts={parts}, rank={rank}, align={align})")
    blocks = -(-n // align)
    a, b = blocks * rank // parts, blocks * (rank + 1) // parts
    return min(n, a * align), min(n, b * align)


def map_ordered(fn: Callable[[int, int], np.ndarray], n: int, align: int = 1) -> np.ndarray:
    """``fn(start, stop)`` on this rank's contiguous part of ``[0, n)`` (see :func:`split_range`), the parts of all
    ranks concatenated in order on every rank. In a world of 1: ``fn(0, n)``."""
    w = world()
    if not w.distributed:
        return np.asarray(fn(0, n))
    a, b = split_range(n, w.size, w.rank, align)
    mine = np.asarray(fn(a, b))
    parts = all_gather(mine)
    return np.concatenate(parts) if parts else mine


def score(detector: Any, data: Any) -> np.ndarray:
    """``detector.score(data)`` split across the ranks of a torchrun world and gathered in order (higher = more
    OOD, as every detector's score); each rank scores a contiguous part of ``data`` (a FeatureSet). A detector
    whose score depends on the whole set at once (test-time methods, which read a stream in order) is
    scored whole on every rank."""
    if not world().distributed or getattr(detector, "test_time", False) or len(data) == 0:
        return np.asarray(detector.score(data), dtype=np.float64)
    def part(a: int, b: int) -> np.ndarray:
        sub = data.subset(np.arange(a, b))
        images = getattr(data, "images", None)
        if images is not None and hasattr(images, "part"):  # a stream of cached images (ODIN): its rows a:b
            sub = sub.with_(images=images.part(a, b))
        return np.asarray(detector.score(sub), dtype=np.float64)

    return map_ordered(part, len(data))
