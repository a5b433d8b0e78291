"""MaxLogit (Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World Settings", ICML 2022)."""

from __future__ import annotations

import numpy as np

from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.featureset import FeatureSet


@register("maxlogit")
class MaxLogit(Detector):
    """Maximum logit. Score = -max_c logits_c (higher = more OOD). No hyperparameters."""

    requires = frozenset({"logits"})
    fit_requires = frozenset()  # nothing is learned from the training split

    def _score(self, data: FeatureSet) -> np.ndarray:
        return -np.asarray(data.logits, dtype=np.float64).max(axis=1)
