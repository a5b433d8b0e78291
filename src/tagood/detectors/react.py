"""ReAct (Sun et al., "ReAct: Out-of-distribution Detection With Rectified Activations", NeurIPS 2021)."""

from __future__ import annotations

import numpy as np

from tagood.detectors._common import energy_score, head_logits, need_head
from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context


@register("react")
class ReAct(Detector):
    """Clip penultimate activations at c = the ``percentile``-th percentile of all IND training
    activations (paper default p = 90), recompute logits through the head, score with energy.
    Score = -logsumexp(head(min(x, c))) (higher = more OOD)."""

    requires = frozenset({"features"})
    context_requires = frozenset({"head"})

    def __init__(self, percentile: float = 90.0) -> None:
        super().__init__(percentile=percentile)
        self.percentile = float(percentile)

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.head = need_head(context, self.name)
        self.threshold = float(np.percentile(np.asarray(train.features, dtype=np.float64), self.percentile))

    def _score(self, data: FeatureSet) -> np.ndarray:
        x = np.minimum(np.asarray(data.features, dtype=np.float64), self.threshold)
        return energy_score(head_logits(self.head, x))
