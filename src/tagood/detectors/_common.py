"""What the detectors that score through the IND linear head share (ReAct, ASH, LHAct, ViM): the head's logits
and the head itself, taken from ``context.head`` or fitted from the training labels as ``tagood bench`` fits it;
and what the logit detectors share (MSP, ViM; Energy for float64 logits): :func:`logit_parts`, the row maximum and the rest of the
exponential sum, from which a log-sum-exp and a maximum softmax follow without losing the small terms.
The numeric primitives (softmax, log-sum-exp, L2 normalisation) are in :mod:`tagood.core.numeric`. Also the two
CPU helpers of the float32 paths: :func:`row_products` (a blocked product through numpy's BLAS) and
:func:`map_row_blocks` (row-wise numpy work split over torch's thread count)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from numpy.typing import ArrayLike

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.types import LinearHead
from tagood.detectors.base import Detector
from tagood.detectors.head import fit_head

log = logging.getLogger(__name__)


def head_logits(head: LinearHead, features: ArrayLike) -> np.ndarray:
    """IND logits ``features @ W.T + b`` of (edited) features through the linear head, in float64."""
    return np.asarray(features, dtype=np.float64) @ head.weight.T.astype(np.float64) + head.bias.astype(np.float64)


def as_tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """``a`` as a torch tensor of ``dtype``, sharing its memory when ``a`` has that dtype already (native byte order,
    no negative strides), else a converted copy. Read-only input (a memory-mapped cache) is accepted: callers only
    read the result, never write into it."""
    if not a.dtype.isnative or any(st < 0 for st in a.strides):
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.as_tensor(a)
    return t.to(dtype)


def head_logits_like(head: LinearHead, features: np.ndarray) -> np.ndarray:
    """IND logits ``features @ W.T + b`` in the precision :func:`compute_dtype` picks for ``features``: float32
    features through a float32 product (torch), float64 ones as :func:`head_logits`.

    Args:
        head: the IND linear head.
        features: ``(N, D)`` features.
    Returns:
        ``(N, C)`` logits, float32 or float64.
    """
    if compute_dtype(features) == torch.float64:
        return head_logits(head, features)
    x = as_tensor(features, torch.float32)
    w = torch.from_numpy(np.ascontiguousarray(head.weight, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(head.bias, dtype=np.float32))
    return torch.addmm(b, x, w.T).numpy()


def row_products(x: np.ndarray, m: np.ndarray, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``x[i : i + rows] @ m`` in float32 for each block of ``rows`` rows, with its start ``i``: the product through
    numpy's BLAS into one block reused by every step (on CPUs it outran torch's here: ``benchmarks/peers.py``), as a
    tensor sharing that block's memory. The next step overwrites it: copy what must outlive the step.

    Args:
        x: ``(N, D)`` rows (any float dtype: converted to float32 block by block).
        m: ``(D, K)`` float32; a transposed view is fine (BLAS reads it as is).
        rows: rows per block.
    """
    block = np.empty((max(0, min(rows, len(x))), m.shape[1]), dtype=np.float32)
    for i in range(0, len(x), rows):
        xc = np.ascontiguousarray(x[i : i + rows], dtype=np.float32)
        yield i, torch.from_numpy(np.matmul(xc, m, out=block[: len(xc)]))


T = TypeVar("T")


def map_row_blocks(fn: Callable[[int, int], T], n: int, threads: int | None = None, min_rows: int = 1,
                   pieces: int = 1) -> list[T]:
    """``fn(start, stop)`` over contiguous blocks of ``range(n)``, on up to ``threads`` threads (default torch's
    intra-op thread count), never more than ``n // min_rows``; ``pieces`` blocks per thread. numpy releases the
    interpreter lock in its selections, reductions and element-wise operations, so blocks of rows run in parallel.
    With one thread, ``fn(0, n)`` is called directly.

    Returns:
        ``fn``'s results in block order.
    """
    workers = max(1, min(threads or torch.get_num_threads(), n // max(1, min_rows)))
    if workers == 1:
        return [fn(0, n)]
    bounds = np.linspace(0, n, pieces * workers + 1).astype(int)
    with ThreadPoolExecutor(workers, thread_name_prefix="tagood-rows") as pool:
        return list(pool.map(lambda ab: fn(int(ab[0]), int(ab[1])), zip(bounds[:-1], bounds[1:], strict=True)))


def compute_dtype(a: np.ndarray) -> torch.dtype:
    """The precision a detector computes an input array in: float32 for float32 and float16 inputs (features and
    logits as backbones, heads and the cache produce them), float64 for everything else (float64, integers)."""
    return torch.float32 if a.dtype.kind == "f" and a.dtype.itemsize <= 4 else torch.float64


#: elements of logits :func:`logit_parts` works on at a time (2 MiB of float32): a block that stays in cache
LOGIT_BLOCK = 2**19


def logit_parts(logits: ArrayLike, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``z = logits / T``: the maximum ``m`` and ``r``, the sum of ``exp(z_j - m)`` over every entry but
    one maximal one, both float64 ``(N,)``. Then ``logsumexp(z) = m + log1p(r)`` and ``max softmax(z) = 1 / (1 + r)``.

    Precision: float64 logits are computed in float64 throughout. float32 / float16 logits are shifted and
    exponentiated in float32 (``torch``, its thread pool; no float64 copy of the logits): each term carries the
    logits' own relative precision, ~1e-7. ``m`` is the exact maximum, whose term is exactly 1, and the terms are
    summed in float64, so ``1 + r`` and ``r`` keep float64's absolute precision: a confident row's MSP score
    ``-1 / (1 + r)`` is as exact as a float64 computation's (float32 would round ``1 + r`` to 1 and tie such rows),
    and ``m + log1p(r)`` is as precise as ``m``.

    Args:
        logits: ``(N, C)`` logits, ``C >= 1``.
        temperature: ``T > 0``.
    Returns:
        ``(m, r)``, each float64 ``(N,)``.
    """
    a = np.asarray(logits)
    if a.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {a.shape}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(a) == 0:
        return np.zeros(0), np.zeros(0)
    x = as_tensor(a, compute_dtype(a))
    if temperature != 1.0:
        x = x / temperature
    n, c = x.shape
    m = torch.empty(n, dtype=x.dtype)
    s = torch.empty(n, dtype=torch.float64)
    # in blocks of rows that stay in the CPU's cache (each row's values and order of summation are those of one
    # whole-array pass: a row's reduction does not depend on the other rows)
    rows = max(1, LOGIT_BLOCK // max(c, 1))
    buf = torch.empty(min(rows, n), c, dtype=x.dtype)
    for i in range(0, n, rows):
        xb, mb = x[i:i + rows], m[i:i + rows]
        torch.amax(xb, dim=1, out=mb)
        eb = buf[:len(xb)]
        torch.sub(xb, mb[:, None], out=eb).exp_()
        # a maximum's exp(0) is exactly 1; the sum is float64, so 1 + r keeps r to float64's absolute precision
        torch.sum(eb, dim=1, dtype=torch.float64, out=s[i:i + rows])
    return m.double().numpy(), (s - 1.0).numpy()


class HeadDetector(Detector):
    """A detector that recomputes IND logits from edited penultimate features through the IND linear head.

    The head is ``context.head`` when given -- ``tagood bench`` passes the one it fits -- else it is fitted here
    from the training split's features and labels with the benchmark's own call
    (:func:`tagood.detectors.head.fit_head`, ``seed`` and ``device`` from the context), so the API gives the
    benchmark's scores. The head is part of the fitted state (saved with the detector).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    context_requires: ClassVar[frozenset[str]] = frozenset({"head"})
    head: LinearHead

    def _can_build(self, entry: str, train: FeatureSet) -> bool:
        return entry == "head" and train.has("labels") and train.has("features")

    def _take_head(self, train: FeatureSet, context: Context) -> LinearHead:
        if context.head is not None:
            return context.head
        log.info("%s: no context.head; fitting the IND linear head on the training features and labels as tagood bench does",
                 self.name)
        return fit_head(train, seed=context.seed, device=context.device)

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.head = self._take_head(train, context)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({"head.weight": self.head.weight, "head.bias": self.head.bias},
                {"head_class_names": list(self.head.class_names) if self.head.class_names is not None else None})

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.head = LinearHead(arrays["head.weight"], arrays["head.bias"], meta.get("head_class_names"))
