"""Common base of the vision-language detectors: class-prompt embeddings at fit time, cosine
similarities and softmax scoring at score time. Scores are OOD scores: **higher = more OOD**."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from tagood.backbones.prompts import DEFAULT_TEMPLATE, encode_prompts, resolve_templates
from tagood.detectors.base import Detector
from tagood.core.numeric import l2_normalize, softmax
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context


def mcm_confidence(image_embeds: np.ndarray, text: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """MCM confidence ``max_c softmax_c(cos(x, t_c) / tau)`` (Ming et al., NeurIPS 2022), (N,) float64."""
    return softmax(l2_normalize(image_embeds) @ l2_normalize(text).T / tau).max(axis=1)


class VLMDetector(Detector):
    """Base for detectors that score dual-encoder image embeddings against IND class prompts.

    Fit needs ``context.dual_encoder`` (a :class:`tagood.backbones.dual_encoder.DualEncoder`) and
    ``context.class_names``; the prompt embeddings are kept, so scoring needs only ``image_embeds``.
    Hyperparameter ``template`` (default ``"a photo of a {}."``); ``templates`` (a list, or a name such as
    ``"clip7"``, CLIP's 7-template ensemble, see :mod:`tagood.backbones.prompts`) overrides it.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"image_embeds"})
    context_requires: ClassVar[frozenset[str]] = frozenset({"dual_encoder", "class_names"})

    def __init__(self, template: str = DEFAULT_TEMPLATE, templates: str | list[str] | None = None, **hparams: Any) -> None:
        super().__init__(template=template, templates=templates, **hparams)
        self.templates = resolve_templates(templates, template)
        self.text: np.ndarray | None = None
        self.class_names: list[str] = []
        self.logit_scale = 100.0

    def _encoder(self, context: Context) -> Any:
        enc = context.dual_encoder
        if not hasattr(enc, "encode_texts"):
            raise ValueError(f"{self.name}: context.dual_encoder must implement encode_texts (tagood.backbones.dual_encoder.DualEncoder)")
        return enc

    def _fit(self, train: FeatureSet, context: Context) -> None:
        enc = self._encoder(context)
        self.class_names = [str(c) for c in (context.class_names or [])]
        if not self.class_names:
            raise ValueError(f"{self.name}.fit needs the IND class names in context.class_names")
        self.text = encode_prompts(enc, self.class_names, self.templates)
        self.logit_scale = float(getattr(enc, "logit_scale", 100.0))


def few_shot_indices(labels: np.ndarray, shots: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to ``shots`` samples per class (all samples when ``shots`` is None)."""
    labels = np.asarray(labels)
    if shots is None:
        return np.flatnonzero(labels >= 0)
    rng = np.random.default_rng(seed)
    out = [rng.permutation(np.flatnonzero(labels == c))[: int(shots)] for c in np.unique(labels[labels >= 0])]
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)
