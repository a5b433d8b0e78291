"""ASH (Djurisic et al., "Extremely Simple Activation Shaping for Out-of-Distribution Detection", ICLR 2023)."""

from __future__ import annotations

import numpy as np

from tagood.detectors._common import energy_score, head_logits, need_head
from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context


def ash_shape(x: np.ndarray, percentile: float, variant: str = "s") -> np.ndarray:
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

    Computed with one ``np.partition`` per call (O(D) per row), in float64.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"ash_shape expects (N, D) features, got shape {x.shape}")
    if variant not in ("s", "b", "p"):
        raise ValueError("variant must be 's', 'b' or 'p'")
    d = x.shape[1]
    n_keep = min(d, max(1, d - int(np.round(d * percentile / 100.0))))
    t = np.partition(x, d - n_keep, axis=1)[:, d - n_keep : d - n_keep + 1]  # k-th largest per row
    mask = (x >= t) & (x > 0)
    s1 = x.sum(axis=1, keepdims=True)
    pruned = np.where(mask, x, 0.0)
    if variant == "p":
        return pruned
    if variant == "b":
        kept = mask.sum(axis=1, keepdims=True)
        return np.where(mask, s1 / np.maximum(kept, 1), 0.0)
    s2 = pruned.sum(axis=1, keepdims=True)
    return pruned * np.exp(s1 / np.maximum(s2, 1e-12))


@register("ash")
class ASH(Detector):
    """ASH-S (default; ASH-P / ASH-B via ``variant``) on penultimate features with pruning
    percentile 90 (the paper's ImageNet ResNet-50 setting), energy through the head.
    Score = -logsumexp(head(ash(x))) (higher = more OOD). Ties at the pruning cut and zero
    activations follow the rule documented in :func:`ash_shape`."""

    requires = frozenset({"features"})
    context_requires = frozenset({"head"})

    def __init__(self, percentile: float = 90.0, variant: str = "s") -> None:
        super().__init__(percentile=percentile, variant=variant)
        if variant not in ("s", "b", "p"):
            raise ValueError("ASH variant must be 's', 'b' or 'p'")
        self.percentile, self.variant = float(percentile), variant

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.head = need_head(context, self.name)

    def _score(self, data: FeatureSet) -> np.ndarray:
        return energy_score(head_logits(self.head, ash_shape(data.features, self.percentile, self.variant)))
