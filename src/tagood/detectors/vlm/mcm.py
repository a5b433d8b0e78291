"""MCM: Maximum Concept Matching (Ming, Cai, Gu, Sun, Li, "Delving into Out-of-Distribution Detection with
Vision-Language Representations", NeurIPS 2022).

Zero-shot: with the IND class prompts ``t_c`` (``"a photo of a {}."``) and an image embedding ``x``, the MCM
confidence is ``max_c softmax_c(cos(x, t_c) / tau)`` with the paper's temperature ``tau = 1`` on raw cosines.
Score (ours, **higher = more OOD**): ``-max_c softmax_c(cos(x, t_c) / tau)``, in ``[-1, -1/C]``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from tagood.core.featureset import FeatureSet
from tagood.core.validation import PosFloat
from tagood.detectors.registry import register
from tagood.detectors.vlm.base import VLMDetector, VLMOptions, mcm_confidence

PAPER = ("Ming, Cai, Gu, Sun & Li, Delving into Out-of-Distribution Detection with Vision-Language Representations, "
         "NeurIPS 2022")


def score(image_embeds: np.ndarray, text: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """MCM OOD score of each image: ``-max_c softmax_c(cos(x, t_c) / tau)``, **higher = more OOD**.

    Args:
        image_embeds: ``(N, E)`` dual-encoder image embeddings.
        text: ``(C, E)`` IND class-prompt embeddings of the same encoder.
        tau: softmax temperature on the raw cosines (the paper: 1).
    Returns:
        ``(N,)`` float64 scores in ``[-1, -1/C]``.
    """
    return -mcm_confidence(image_embeds, text, tau)


@register("mcm")
class MCM(VLMDetector):
    """MCM (Ming et al., NeurIPS 2022): ``-max_c softmax_c(cos(x, t_c) / tau)``, higher = more OOD. Zero-shot: it
    learns nothing from training images (``requires_fit`` is False); its prompts come from
    ``det.attach(tagood.Context(dual_encoder=..., class_names=[...]))`` or ``fit``. See :func:`score`."""

    class Options(VLMOptions):
        tau: PosFloat = Field(1.0, description="softmax temperature on the raw cosines (the paper: 1)")

    options: Options
    paper: ClassVar[str] = PAPER
    fit_requires: ClassVar[frozenset[str] | None] = frozenset()  # zero-shot: nothing is learned from train
    requires_fit: ClassVar[bool] = False

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert data.image_embeds is not None
        return score(data.image_embeds, self._prompt_rows(), self.options.tau)
