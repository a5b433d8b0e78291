"""LHAct (Yuan, He, Han & Yin, "LHAct: Rectifying Extremely Low and High Activations for
Out-of-Distribution Detection", ACM MM 2023), as cited by the TagOOD paper.

Our reading of the method: per unit of the penultimate layer, IND training statistics give a low
and a high threshold; activations above the high threshold are clipped to it (extremely high
activations, as in ReAct but per unit) and activations below the low threshold are set to zero
(extremely low activations carry little class evidence but shift OOD logits); the rectified
features go through the classifier and are scored with energy. Thresholds are per-unit
percentiles of the IND training activations (defaults: low 10th, high 90th percentile); the
TagOOD paper notes LHAct's published hyperparameters were tuned for another backbone, so both are
parameters.
"""

from __future__ import annotations

import numpy as np

from tagood.detectors._common import energy_score, head_logits, need_head
from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context


@register("lhact")
class LHAct(Detector):
    """Rectify extremely low (-> 0) and extremely high (-> per-unit cap) activations, then energy.
    Score = -logsumexp(head(rectified x)) (higher = more OOD)."""

    requires = frozenset({"features"})
    context_requires = frozenset({"head"})

    def __init__(self, low_percentile: float = 10.0, high_percentile: float = 90.0) -> None:
        super().__init__(low_percentile=low_percentile, high_percentile=high_percentile)
        if not 0 <= low_percentile < high_percentile <= 100:
            raise ValueError("need 0 <= low_percentile < high_percentile <= 100")
        self.low_p, self.high_p = float(low_percentile), float(high_percentile)

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.head = need_head(context, self.name)
        x = np.asarray(train.features, dtype=np.float64)
        self.low = np.percentile(x, self.low_p, axis=0)
        self.high = np.percentile(x, self.high_p, axis=0)

    def rectify(self, x: np.ndarray) -> np.ndarray:
        x = np.minimum(np.asarray(x, dtype=np.float64), self.high)
        return np.where(x < self.low, 0.0, x)

    def _score(self, data: FeatureSet) -> np.ndarray:
        return energy_score(head_logits(self.head, self.rectify(data.features)))
