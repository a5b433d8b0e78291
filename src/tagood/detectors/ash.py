"""ASH (Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution Detection",
ICLR 2023).

Each sample's penultimate activations are pruned to their top ``100 - percentile`` percent and reshaped (ASH-S:
rescaled by ``exp(s1 / s2)``; ASH-B: binarised; ASH-P: pruned only), then scored with the energy of the IND head's
logits: ``score(x) = -logsumexp(W ash(x) + b)``, **higher = more OOD**. Learns nothing but the head.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BeforeValidator, Field

from tagood.core.featureset import FeatureSet
from tagood.core.types import LinearHead
from tagood.core.validation import _finite_check
from tagood.detectors import energy
from tagood.detectors._common import HeadDetector, head_logits_like, map_row_blocks
from tagood.detectors.base import field_array
from tagood.detectors.options import DetectorOptions
from tagood.detectors.registry import register

PAPER = "Djurisic, Bozanic, Ashok & Liu, Extremely Simple Activation Shaping for Out-of-Distribution Detection, ICLR 2023"
VARIANTS = ("s", "b", "p")


def ash_shape(x: ArrayLike, percentile: float, variant: str = "s") -> np.ndarray:
    """ASH's activation shaping, per sample (row) of ``x`` (Djurisic et al., ICLR 2023, Sec. 3):
    keep the top ``k = D - round(D * percentile / 100)`` activations (the paper's code: ``k`` from the
    percentile, then a top-k), zero the rest; ``s`` rescales the kept ones by exp(s1 / s2) (s1, s2: the
    row's sum before / after pruning), ``b`` binarises them to s1 / (number kept), ``p`` only prunes.

    **Tie rule** (the paper leaves it open; a top-k picks arbitrarily among equal values, and with
    ReLU6 features stored in fp16 the cut often falls on tied values, mostly zeros):

    * an activation <= 0 is never "top": it carries no evidence, and keeping zeros would let ASH-B
      hand them the mean s1 / k;
    * among values equal to the k-th largest, all are kept or none: a row keeps exactly the entries
      ``x >= t and x > 0`` with ``t`` its k-th largest value. So a row may keep more than ``k`` entries
      (ties at the cut) or fewer (fewer than ``k`` positive entries), and the result does not depend on
      the order of the units (permutation equivariant);
    * ASH-B divides s1 by the number actually kept, so the row's sum is preserved as the paper
      intends (s1 / k when there are no ties); a row with nothing positive becomes all zeros.

    Computed with one ``np.partition`` per call (O(D) per row), in float64 -- or, for float32 / float16 input, in
    float32 (:func:`ash_shape_like`).

    Args:
        x: ``(N, D)`` activations.
        percentile: the percentage of each row's activations pruned, in ``[0, 100)``.
        variant: ``'s'``, ``'b'`` or ``'p'``.
    Returns:
        ``(N, D)`` float64 shaped activations.
    """
    return ash_shape_like(np.asarray(x, dtype=np.float64), percentile, variant)


def ash_shape_like(x: ArrayLike, percentile: float, variant: str = "s") -> np.ndarray:
    """:func:`ash_shape` in the precision of ``x``: float64 for float64 (and other non-float32) input, float32 for
    float32 / float16 input. The float32 path keeps what decides ties exact: the cut ``t`` and the mask
    ``x >= t and x > 0`` compare the input values themselves (no rounding); the row sums ``s1``, ``s2`` and the
    factor ``exp(s1 / s2)`` (or ``s1 / kept``) are float64, and only the shaped activations are rounded to float32
    (relative 6e-8) for the head's float32 product.

    Args:
        x: ``(N, D)`` activations.
        percentile: the percentage of each row's activations pruned, in ``[0, 100)``.
        variant: ``'s'``, ``'b'`` or ``'p'``.
    Returns:
        ``(N, D)`` shaped activations, float32 for float32 / float16 input, else float64.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float16):
        x = np.asarray(x, dtype=np.float64)
    elif x.dtype == np.float16:
        x = x.astype(np.float32)
    if x.ndim != 2:
        raise ValueError(f"ash_shape expects (N, D) features, got shape {x.shape}")
    if variant not in VARIANTS:
        raise ValueError("variant must be 's', 'b' or 'p'")
    d = x.shape[1]
    n_keep = min(d, max(1, d - int(np.round(d * percentile / 100.0))))
    out = np.empty_like(x)
    # each row is shaped on its own: blocks of rows on torch's thread count
    map_row_blocks(lambda i, j: _shape_rows(x[i:j], out[i:j], d - n_keep, variant), len(x), min_rows=256, pieces=4)
    return out


def _shape_rows(x: np.ndarray, out: np.ndarray, at: int, variant: str) -> None:
    """:func:`ash_shape_like` of the rows ``x`` into ``out``; ``at`` = ``D - k`` (the cut is each row's
    ``k``-th largest value)."""
    t = np.partition(x, at, axis=1)[:, at : at + 1]  # k-th largest per row
    mask = (x >= t) & (x > 0)
    zero = x.dtype.type(0)
    if variant == "p":
        np.copyto(out, np.where(mask, x, zero))
        return
    s1 = x.sum(axis=1, keepdims=True, dtype=np.float64)
    if variant == "b":
        kept = mask.sum(axis=1, keepdims=True)
        np.copyto(out, np.where(mask, (s1 / np.maximum(kept, 1)).astype(x.dtype), zero))
        return
    pruned = np.where(mask, x, zero)
    s2 = pruned.sum(axis=1, keepdims=True, dtype=np.float64)
    np.multiply(pruned, np.exp(s1 / np.maximum(s2, 1e-12)).astype(x.dtype), out=out)


def score(features: ArrayLike, head: LinearHead, percentile: float = 90.0, variant: str = "s") -> np.ndarray:
    """ASH OOD score: energy of the IND logits of the shaped features, ``-logsumexp(W ash(x) + b)``,
    **higher = more OOD**.

    Args:
        features: ``(N, D)`` penultimate features.
        head: the IND linear head.
        percentile: the percentage of activations pruned per sample, in ``[0, 100)`` (paper, ImageNet: 90).
        variant: ``'s'`` (ASH-S), ``'b'`` (ASH-B) or ``'p'`` (ASH-P); see :func:`ash_shape`.
    Returns:
        ``(N,)`` float64 scores. float64 features are scored in float64; float32 / float16 features through
        :func:`ash_shape_like`'s float32 path, a float32 head product and the energy's float32 path.
    """
    return energy.score(head_logits_like(head, ash_shape_like(features, percentile, variant)))


@register("ash")
class ASH(HeadDetector):
    """ASH-S (default; ASH-P / ASH-B via ``variant``) on penultimate features, energy through the IND head.
    Score = ``-logsumexp(head(ash(x)))`` (higher = more OOD). Ties at the pruning cut and zero activations follow
    the rule documented in :func:`ash_shape`."""

    class Options(DetectorOptions):
        percentile: Annotated[float, BeforeValidator(_finite_check), Field(ge=0, lt=100)] = Field(
            90.0, description="percentage of each sample's activations pruned (the paper's ImageNet ResNet-50 setting: 90)")
        variant: Literal["s", "b", "p"] = Field("s", description="s: rescale the kept activations, b: binarise them, "
                                                               "p: prune only")

    options: Options
    paper: ClassVar[str] = PAPER

    def _score(self, data: FeatureSet) -> np.ndarray:
        return score(field_array(data, "features"), self.head, self.options.percentile, self.options.variant)
