"""Run a torch module through onnxruntime on CPU: one-time cached export, batch-parallel inference.

On a CPU, splitting a batch into parts and running them single-threaded on all cores at once
(concurrent ``session.run`` calls of one session) is faster than one ``run`` whose every operator
is split over the cores: there are no per-operator barriers, and a core briefly taken by other
work (image decoding in the extraction pipeline) delays only its own part while the other
workers take the remaining parts. Measured on 2 cores with EfficientNet-Lite0 (batch 64):
~4.3-5.0 ms/image for 2 concurrent single-thread runs vs ~5.0-5.3 ms/image for one 2-thread run
(8.2 ms/image single-threaded). Batches smaller than the number of workers go through a second,
multi-threaded session (lowest latency for one image).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tagood.runtime.fileio import atomic_write_with
from tagood.runtime.threads import budget

log = logging.getLogger(__name__)


def _usable_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (hyper-threads of one core count once),
    at most the thread budget of :mod:`tagood.runtime.threads` (``--threads``, ``$TAGOOD_THREADS``,
    ``$OMP_NUM_THREADS``): the default number of workers of an engine.

    Reads ``/sys/devices/system/cpu/cpuN/topology`` on Linux; elsewhere (or when it cannot be
    read) the number of usable logical CPUs.
    """
    return min(_topology_cores(), budget())


def _topology_cores() -> int:
    cpus = _usable_cpus()
    cores: set[tuple[str, str]] = set()
    try:
        for c in cpus:
            topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
    except OSError:
        return max(1, len(cpus))
    return max(1, len(cores))


def export_onnx(module: nn.Module, path: Path, input_shape: Sequence[int], input_name: str,
                output_names: Sequence[str], opset: int = 17) -> None:
    """Export ``module`` (on CPU, eval mode) to ONNX at ``path`` with a dynamic batch axis.

    The file is written to a temporary name in the same folder and renamed into place, so a
    concurrent or interrupted export never leaves a partial file at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to ONNX (once): %s", type(module).__name__, path)
    axes = {name: {0: "batch"} for name in (input_name, *output_names)}

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.cpu().eval(), (torch.zeros(*input_shape),), str(tmp), input_names=[input_name],
                              output_names=list(output_names), dynamic_axes=axes, opset_version=opset, dynamo=False)

    atomic_write_with(path, write, suffix=".onnx.tmp")


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # no busy-waiting between operators: decode threads of the extraction pipeline need those cycles
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for damaged files
        raise RuntimeError(f"onnxruntime cannot load {path} ({e}); delete the file and it will be exported again") from e


class OnnxEngine:
    """An ONNX model run by ``workers`` concurrent single-thread onnxruntime runs on batch parts.

    ``run_parts(batch, fn)`` splits ``batch`` along axis 0 into contiguous parts (up to
    ``parts_per_worker`` per worker, at least ``min_part`` images each), runs the model on them
    in ``workers`` threads and calls ``fn(start, outputs)`` in the thread that ran the part (so the
    post-processing runs in parallel too). onnxruntime releases the GIL while it runs.
    """

    parts_per_worker = 4
    min_part = 8

    def __init__(self, path: Path, input_name: str, workers: int) -> None:
        self.path = Path(path)
        self.input_name = input_name
        self.workers = max(1, int(workers))
        self._single = _session(self.path, 1)
        self._multi: Any = None
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="tagood-ort") if self.workers > 1 else None

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """All outputs for ``x`` in one call (multi-threaded operators when ``workers > 1``)."""
        if self.workers == 1:
            return self._single.run(None, {self.input_name: x})
        if self._multi is None:
            self._multi = _session(self.path, self.workers)
        return self._multi.run(None, {self.input_name: x})

    def run_parts(self, batch: np.ndarray, fn: Callable[[int, list[np.ndarray]], None]) -> None:
        n = len(batch)
        if self._pool is None or n < self.workers:
            fn(0, self.run(np.ascontiguousarray(batch)))
            return
        # a few parts per worker (of >= min_part images): a worker slowed down by other work on its
        # core leaves its remaining parts to the others instead of making them wait at the end
        n_parts = max(self.workers, min(self.workers * self.parts_per_worker, n // self.min_part))
        bounds = np.linspace(0, n, n_parts + 1).round().astype(int)

        def part(k: int) -> None:
            a, b = int(bounds[k]), int(bounds[k + 1])
            fn(a, self._single.run(None, {self.input_name: np.ascontiguousarray(batch[a:b])}))

        for f in [self._pool.submit(part, k) for k in range(n_parts)]:
            f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
