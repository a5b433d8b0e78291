"""Thread discipline: one CPU thread budget for torch, onnxruntime and the image-decoding pool.

The budget is, in order of precedence: the ``--threads`` option (:func:`configure`), ``$TAGOOD_THREADS``,
``$OMP_NUM_THREADS``, else the number of CPUs in this process's affinity mask (``os.sched_getaffinity``:
a ``taskset`` / cgroup / SLURM ``--cpus-per-task`` limit counts, the machine's core count does not).

Every pool sizes itself from this one number and none nests inside another:

* torch's intra-op threads = the budget (:func:`configure`);
* onnxruntime runs ``budget`` single-thread sessions at once (:class:`tagood.backbones.onnx_engine.OnnxEngine`),
  never a multi-thread session inside them;
* the decode pool (:func:`decode_workers`) has ``budget`` workers (at most 8): the extraction's are processes
  (:func:`decode_kind`: not bound by one interpreter lock), an image stream's (ODIN, KR-NFT) threads; they run PIL /
  numpy code only, never torch or onnxruntime, and work ahead of the model instead of inside it.

On a shared machine the cost of a parallel section is set by its slowest thread: a thread that has lost
its core to another process keeps the others waiting at the section's barrier. OpenMP's default is to
*spin* at barriers, which burns the very core time the late thread needs; :func:`configure`, called
before torch is first imported, therefore sets ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at barriers)
unless the user chose a policy -- **when other processes are using this process's CPUs** at that moment
(:func:`others_busy`). On an idle machine spinning is faster (ODIN's input gradients: 30.4 vs 21.4
images/s on 2 cores, ``benchmarks/odin_lean.py`` under each policy), so the default stays. Projector
trainings on the CPU avoid the barriers altogether: each batch's two parts run on threads of their own with
single-thread operators (:class:`tagood.detectors.tagood.train.CpuParts`). Beside two 2-thread processes on 2 cores the
demo's ``ce+cs`` training then slows 2.45-2.89x instead of 3.99-4.26x with torch's two intra-op threads
(``benchmarks/contention.py``; docs/performance.md), and its trained bits depend neither on the probe nor on budgets of 1
to 3 threads.

``$TAGOOD_BUSY=0|1`` overrides the probe.
"""

from __future__ import annotations

import logging
import os
import sys

from tagood.errors import ConfigError

log = logging.getLogger(__name__)

#: environment variable that sets the budget (below ``--threads``, above ``OMP_NUM_THREADS``)
ENV = "TAGOOD_THREADS"

_STATE: dict[str, int | None] = {"threads": None}


def affinity_cpus() -> int:
    """Number of CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    first = raw.split(",")[0].strip()  # OMP_NUM_THREADS may be a list of nesting levels: the first is ours
    shown = raw if len(raw) <= 20 else raw[:20] + "..."
    if not (first.isascii() and first.isdigit()):
        raise ConfigError(f"the environment variable {name}={shown!r} is not a whole number of threads; unset it or set "
                          f"e.g. {name}=2")
    v = int(first)
    if v < 1:
        raise ConfigError(f"the environment variable {name}={shown!r}: the number of threads must be >= 1; unset it or "
                          f"set e.g. {name}=2")
    return v


def resolve(threads: int | None = None) -> int:
    """The thread budget: ``threads`` if given, else ``$TAGOOD_THREADS``, else ``$OMP_NUM_THREADS``, else the
    affinity mask's CPU count. Raises :class:`tagood.errors.ConfigError` (a ``ValueError``) naming the option or
    environment variable for a budget below 1 or a value that is not a whole number."""
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        return int(threads)
    for name in (ENV, "OMP_NUM_THREADS"):
        v = _env_int(name)
        if v is not None:
            return v
    return affinity_cpus()


#: other processes using at least this many of our CPUs (on average over the probe) make the machine "busy"
BUSY_CORES = 0.5


def _proc_ticks(cpus: set[int]) -> tuple[int, int] | None:
    """(busy clock ticks of ``cpus`` since boot, this process's own user + system ticks), or None without /proc."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    busy = 0
    for line in lines:
        head, _, rest = line.partition(" ")
        if head.startswith("cpu") and head[3:].isdigit() and int(head[3:]) in cpus:
            v = [int(x) for x in rest.split()]
            busy += sum(v) - v[3] - (v[4] if len(v) > 4 else 0)  # everything but idle and iowait (steal counts)
    return busy, int(own[11]) + int(own[12])  # utime, stime (fields 14, 15 of stat)


def others_busy(window: float = 0.1) -> float | None:
    """Cores of this process's affinity mask kept busy by *other* processes (or stolen by the hypervisor),
    averaged over ``window`` seconds (Linux ``/proc``; None elsewhere)."""
    import time

    cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    a = _proc_ticks(cpus)
    t0 = time.monotonic()
    time.sleep(window)
    b = _proc_ticks(cpus)
    if a is None or b is None:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / hz / max(time.monotonic() - t0, 1e-3))


def machine_busy() -> bool:
    """True when other processes use at least :data:`BUSY_CORES` of our CPUs (``$TAGOOD_BUSY=0|1`` overrides).

    Probed once per process (the first call; the CLI makes it at start, before torch is imported, to choose
    OpenMP's wait policy) and remembered, so what ``results.json`` records is the probe that chose the policy; a
    later change of load does not switch it."""
    forced = os.environ.get("TAGOOD_BUSY", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if _BUSY["probed"] is None:
        others = others_busy()
        _BUSY["probed"] = others is not None and others >= BUSY_CORES
        log.debug("other processes use %s of this process's CPUs: %s", "?" if others is None else f"{others:.2f} cores",
                  "busy" if _BUSY["probed"] else "idle")
    return bool(_BUSY["probed"])


#: the remembered probe of :func:`machine_busy` (None: not probed yet)
_BUSY: dict[str, bool | None] = {"probed": None}


def budget() -> int:
    """The configured budget (:func:`configure`), or :func:`resolve`'s answer when nothing was configured."""
    n = _STATE["threads"]
    return n if n is not None else resolve()


def decode_workers(limit: int = 8) -> int:
    """Workers (processes or threads) of an image-decoding pool: the budget, at most ``limit``."""
    return max(1, min(limit, budget()))


#: environment variable that chooses the extraction's decode workers: ``processes`` (default) or ``threads``
DECODE_ENV = "TAGOOD_DECODE"
DECODE_KINDS = ("processes", "threads")


def decode_kind() -> str:
    """What the extraction decodes in: ``"processes"`` (the default: forked workers, batches in shared memory) or
    ``"threads"`` (one process's thread pool), from ``$TAGOOD_DECODE``. Both give the same cache, bit for bit.

    Raises:
        ConfigError: ``$TAGOOD_DECODE`` is set to something else.
    """
    raw = os.environ.get(DECODE_ENV, "").strip().lower()
    if not raw:
        return "processes"
    if raw not in DECODE_KINDS:
        raise ConfigError(f"the environment variable {DECODE_ENV}={raw[:20]!r} is not one of {', '.join(DECODE_KINDS)}; "
                          f"unset it or set e.g. {DECODE_ENV}=threads")
    return raw


def configure(threads: int | None = None) -> int:
    """Set the process's thread budget (see the module docstring); returns it.

    Before torch is imported this only sets environment variables, which torch's OpenMP runtime, MKL and
    numpy's BLAS read when they load (``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY=PASSIVE`` unless the user set a
    policy), so a command that never needs torch does not pay for importing it. Afterwards it calls
    ``torch.set_num_threads`` (the wait policy can then no longer change). Child processes (torchrun
    workers) inherit the budget through ``$TAGOOD_THREADS``.
    """
    n = resolve(threads)
    _STATE["threads"] = n
    os.environ[ENV] = str(n)
    if "torch" not in sys.modules:
        os.environ["OMP_NUM_THREADS"] = str(n)
        if "OMP_WAIT_POLICY" not in os.environ and n > 1 and machine_busy():
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        import torch

        if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
            log.debug("torch was imported before tagood.runtime.threads.configure: OpenMP's wait policy stays as it is")
        torch.set_num_threads(n)
    log.debug("thread budget %d (affinity mask: %d CPUs)", n, affinity_cpus())
    return n
