"""ReAct (Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations", NeurIPS 2021).

Penultimate activations are clipped at ``c``, the ``percentile``-th percentile of all IND training activations
(paper: 90), the IND logits are recomputed through the linear head and scored with energy:
``score(x) = -logsumexp(W min(x, c) + b)``, **higher = more OOD**.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from numpy.typing import ArrayLike
from pydantic import BeforeValidator, Field

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.types import LinearHead
from tagood.core.validation import _finite_check
from tagood.detectors import energy
from tagood.detectors._common import HeadDetector, compute_dtype, head_logits, head_logits_like, map_row_blocks
from tagood.detectors.base import field_array
from tagood.detectors.options import DetectorOptions
from tagood.detectors.registry import register

PAPER = "Sun, Guo & Li, ReAct: Out-of-distribution Detection With Rectified Activations, NeurIPS 2021"


def clip_value(train_features: ArrayLike, percentile: float = 90.0) -> float:
    """ReAct's clip ``c``: the ``percentile``-th percentile (numpy's linear interpolation) of all IND training
    activations ``(N, D)``, in float64. float32 / float16 activations are not copied to float64: the two order
    statistics are found in their own dtype (exact: they are two of the values) and interpolated in float64 as
    ``np.percentile`` does, so the clip equals ``np.percentile`` of the float64 copy to rounding."""
    a = np.asarray(train_features)
    if a.dtype not in (np.float32, np.float16) or a.size == 0:
        return float(np.percentile(np.asarray(a, dtype=np.float64), percentile))
    flat = a.reshape(-1)
    if np.isnan(flat).any():  # numpy's answer: nan
        return float("nan")
    v = (percentile / 100.0) * (flat.size - 1)
    lo = int(np.floor(v))
    hi = min(lo + 1, flat.size - 1)
    x0, x1 = order_statistics(flat, lo, hi)
    g = v - lo
    diff = x1 - x0
    return x1 - diff * (1.0 - g) if g >= 0.5 else x0 + diff * g  # numpy's _lerp


def order_statistics(flat: np.ndarray, lo: int, hi: int, sample: int = 2**20) -> tuple[float, float]:
    """The ``lo``-th and ``hi``-th smallest values (0-based, ``lo <= hi``) of the 1-D NaN-free array ``flat``,
    exactly: what ``np.partition(flat, [lo, hi])`` leaves at ``lo`` and ``hi``, without partitioning a copy of
    all of ``flat`` on one core. A strided sample of about ``sample`` values brackets the two ranks; one pass,
    split over torch's thread count (numpy releases the interpreter lock), counts the values below the bracket
    and takes those inside it, and only those are partitioned. When the bracket misses a rank (unlikely: it is
    6 standard errors wide, plus the sample spacing), the whole array is partitioned as before."""
    n = flat.size
    if n <= 4 * sample:
        return _partitioned(flat, lo, hi)
    s = np.sort(flat[:: n // sample])
    m = len(s)
    f0, f1 = lo / (n - 1), hi / (n - 1)
    slack = 6.0 * np.sqrt(max(f0 * (1 - f0), 1.0 / m) / m) + 2.0 / m
    a = s[int(np.floor((f0 - slack) * (m - 1)))] if f0 - slack > 0 else -np.inf
    b = s[int(np.ceil((f1 + slack) * (m - 1)))] if f1 + slack < 1 else np.inf

    def split(i: int, j: int) -> tuple[int, np.ndarray]:
        c = flat[i:j]
        return int(np.count_nonzero(c < a)), c[(c >= a) & (c <= b)]

    parts = map_row_blocks(split, n, pieces=4)
    below = sum(c for c, _ in parts)
    inside = np.concatenate([v for _, v in parts])
    if below <= lo and below + inside.size > hi:
        return _partitioned(inside, lo - below, hi - below)
    return _partitioned(flat, lo, hi)  # the bracket missed: every value


def _partitioned(a: np.ndarray, i: int, j: int) -> tuple[float, float]:
    """The ``i``-th and ``j``-th smallest values of ``a`` (``i <= j``), by ``np.partition`` of a copy."""
    part = np.partition(a, [i, j] if j != i else [i])
    return float(part[i]), float(part[j])


def score(features: ArrayLike, head: LinearHead, clip: float) -> np.ndarray:
    """ReAct OOD score: energy of the IND logits of the clipped features, ``-logsumexp(W min(x, clip) + b)``,
    **higher = more OOD**.

    Args:
        features: ``(N, D)`` penultimate features.
        head: the IND linear head (``W (C, D)``, ``b (C,)``).
        clip: the activation cap ``c`` (:func:`clip_value` of the training features).
    Returns:
        ``(N,)`` float64 scores. float64 features are scored in float64; float32 / float16 features in float32
        (clipping is exact in any dtype; the logits are a float32 product, scored by
        :func:`tagood.detectors.energy.score`'s float32 path), about 1e-7 relative from the float64 computation.
    """
    x = np.asarray(features)
    if compute_dtype(x) == torch.float32:
        return energy.score(head_logits_like(head, np.minimum(x.astype(np.float32, copy=False), np.float32(clip))))
    return energy.score(head_logits(head, np.minimum(np.asarray(x, dtype=np.float64), clip)))


@register("react")
class ReAct(HeadDetector):
    """Clip penultimate activations at the ``percentile``-th percentile of the IND training activations, energy of
    the head's logits. Score = ``-logsumexp(head(min(x, c)))`` (higher = more OOD). See :func:`score`."""

    class Options(DetectorOptions):
        percentile: Annotated[float, BeforeValidator(_finite_check), Field(gt=0, le=100)] = Field(
            90.0, description="clip at this percentile of all IND training activations (the paper: 90)")

    options: Options
    paper: ClassVar[str] = PAPER
    threshold: float

    def _fit(self, train: FeatureSet, context: Context) -> None:
        super()._fit(train, context)
        self.threshold = clip_value(field_array(train, "features"), self.options.percentile)

    def _score(self, data: FeatureSet) -> np.ndarray:
        return score(field_array(data, "features"), self.head, self.threshold)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super()._state()
        return arrays, {**meta, "threshold": self.threshold}

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        super()._set_state(arrays, meta)
        self.threshold = float(meta["threshold"])
