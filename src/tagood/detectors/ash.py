"""ASH (Djurisic et al., "Extremely Simple Activation Shaping for Out-of-Distribution Detection", ICLR 2023)."""

from __future__ import annotations

import numpy as np

from tagood.detectors._common import energy_score, head_logits, need_head
from tagood.detectors.base import Detector, register
from tagood.types import Context, FeatureSet


def ash_shape(x: np.ndarray, percentile: float, variant: str = "s") -> np.ndarray:
    """Per sample: zero the activations below that sample's ``percentile``-th value, then
    ``s`` rescales the rest by exp(sum_before / sum_after), ``b`` binarises them to sum_before / kept,
    ``p`` only prunes."""
    x = np.asarray(x, dtype=np.float64)
    n_keep = x.shape[1] - int(np.round(x.shape[1] * percentile / 100.0))
    n_keep = max(1, n_keep)
    # keep exactly the top n_keep per row (ties broken by position), as a top-k does
    order = np.argsort(-x, axis=1, kind="stable")[:, :n_keep]
    mask = np.zeros_like(x, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    s1 = x.sum(axis=1, keepdims=True)
    pruned = np.where(mask, x, 0.0)
    if variant == "p":
        return pruned
    if variant == "b":
        return np.where(mask, s1 / n_keep, 0.0)
    if variant == "s":
        s2 = pruned.sum(axis=1, keepdims=True)
        return pruned * np.exp(s1 / np.maximum(s2, 1e-12))
    raise ValueError("variant must be 's', 'b' or 'p'")


@register("ash")
class ASH(Detector):
    """ASH-S (default; ASH-P / ASH-B via ``variant``) on penultimate features with pruning
    percentile 90 (the paper's ImageNet ResNet-50 setting), energy through the head.
    Score = -logsumexp(head(ash(x))) (higher = more OOD)."""

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
