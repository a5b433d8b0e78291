"""MSP: maximum softmax probability (Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks", ICLR 2017)."""

from __future__ import annotations

import numpy as np

from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.numeric import softmax
from tagood.core.featureset import FeatureSet


@register("msp")
class MSP(Detector):
    """Maximum softmax probability. Score = -max_c softmax(logits)_c (higher = more OOD). No hyperparameters."""

    requires = frozenset({"logits"})
    fit_requires = frozenset()  # nothing is learned from the training split

    def _score(self, data: FeatureSet) -> np.ndarray:
        return -softmax(data.logits).max(axis=1)
