"""Large buffers from the heap, not from fresh pages: glibc's ``malloc`` settings for tensor-sized work.

glibc serves an allocation above its mmap threshold (dynamic, but never above 32 MiB by default) with a fresh
``mmap`` and returns it to the kernel on ``free``; every such buffer is then faulted in and zero-filled page by
page when first written, and it returns the heap's free top to the kernel above 128 KiB. CPU torch allocates
every activation afresh (it has no caching allocator on the CPU), so a forward + backward pass over a batch of
images pays those page faults on each of its large activations, every batch: ODIN on EfficientNet-Lite0 (a
16 x 96 x 112 x 112 float32 activation is 77 MiB) scored 23-26 images/s with glibc's defaults and 32-39 with
both thresholds at 256 MiB (2 cores, two alternated runs per batch size of 8 and 16; ``tagood demo --methods
odin``: 57-61 s vs 43-50 s; ``benchmarks/malloc_thresholds.py``: 1.53x, scores identical).

:func:`keep_large_allocations` sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (``mallopt``): allocations
below the limit come from the heap and freed ones are reused. What it costs: up to the limit of freed memory
stays with the process, and a long-lived allocation in the middle of the heap can keep freed memory below it
from going back. Buffers above the limit (e.g. gigabytes of features) still use ``mmap``. The CLI calls it at
start; a library user calls it or sets ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` before Python
starts. Elsewhere than glibc (musl, macOS, Windows) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: the default limit: the largest activations of a batch of 16 EfficientNet-Lite / Swin images stay below it
LIMIT_MB = 256


def keep_large_allocations(limit_mb: int = LIMIT_MB) -> bool:
    """Serve allocations below ``limit_mb`` MiB from the heap and keep up to that much freed memory for reuse
    (glibc's ``mallopt``); True when both settings took, False where there is no glibc ``mallopt``."""
    if limit_mb < 1:
        raise ValueError(f"limit_mb must be >= 1, got {limit_mb}")
    if not sys.platform.startswith("linux"):
        log.debug("malloc thresholds left alone: not Linux (%s)", sys.platform)
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.debug("malloc thresholds left alone: the C library has no mallopt")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = int(limit_mb) * 1024 * 1024
    ok = mallopt(M_MMAP_THRESHOLD, limit) == 1 and mallopt(M_TRIM_THRESHOLD, limit) == 1
    log.debug("malloc: mmap and trim thresholds %d MiB: %s", limit_mb, "set" if ok else "refused by the C library")
    return ok
