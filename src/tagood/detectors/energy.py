"""Energy score (Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020)."""

from __future__ import annotations

import numpy as np

from tagood.detectors._common import energy_score
from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.featureset import FeatureSet


@register("energy")
class Energy(Detector):
    """Free energy E(x) = -T logsumexp(logits / T), T = 1 (paper default). Score = E(x) (higher = more OOD)."""

    requires = frozenset({"logits"})
    fit_requires = frozenset()  # nothing is learned from the training split

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__(temperature=temperature)
        self.temperature = float(temperature)

    def _score(self, data: FeatureSet) -> np.ndarray:
        return energy_score(data.logits, self.temperature)
