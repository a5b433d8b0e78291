"""MCM: Maximum Concept Matching (Ming, Cai, Gu, Sun, Li, "Delving into Out-of-Distribution
Detection with Vision-Language Representations", NeurIPS 2022).

Score (ours, **higher = more OOD**): ``-max_c softmax_c(cos(x, t_c) / tau)`` over the IND class
prompts ``"a photo of a {}."``, with the paper's temperature ``tau = 1`` on raw cosines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tagood.detectors.registry import register
from tagood.core.featureset import FeatureSet
from tagood.detectors.vlm.base import VLMDetector, mcm_confidence


@register("mcm")
class MCM(VLMDetector):
    """MCM (Ming et al., NeurIPS 2022); zero-shot, nothing is trained. Higher score = more OOD."""

    def __init__(self, tau: float = 1.0, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.hparams["tau"] = tau
        self.tau = float(tau)

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert self.text is not None
        return -mcm_confidence(data.image_embeds, self.text, self.tau)
