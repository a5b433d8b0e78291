"""TagOOD, the full method, as the ``tagood`` detector (Li et al., "TagOOD: A Novel Approach to Out-of-Distribution
Detection via Vision-Language Representations and Class Center Learning", ACM MM 2024).

An image's tokens are cut down to its *object* tokens -- where the attention of a kept IND tag is high
(:mod:`tagood.detectors.tagood.decompose`, section 3.3) -- a transformer projector ``g`` turns them into one feature,
trained with cross-entropy and an MSE pull to EMA class centres ``mu_c`` (:mod:`tagood.detectors.tagood.train`,
section 3.4), and the score is the distance to the nearest centre (Eq. 6):

    ``score(x) = -max_c cos(g(x_obj), mu_c)``  -- **higher = more OOD**;

an image without a kept IND tag gets ``NO_TAG_SCORE`` (section 3.5) or its all-token score (option ``no_tag``).
The paper's ablations: :mod:`tagood.detectors.tagood.ablations` (CS, (CE)+CS), :mod:`tagood.detectors.tagood.tagscore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import model_validator
from pydantic_core import PydanticCustomError

from tagood.core.context import Context
from tagood.core.types import TokenSet
from tagood.detectors import persist
from tagood.detectors.registry import register
from tagood.detectors.tagood.centres import CentreDetector, CentreOptions, class_means
from tagood.detectors.tagood.config import TrainConfig, TrainOptions
from tagood.detectors.tagood.projector import Projector
from tagood.detectors.tagood.train import embed_features, train_projector

__all__ = ["TagOOD"]


@register("tagood")
class TagOOD(CentreDetector):
    """TagOOD: object tokens (tags + attention) -> projector ``g`` -> distance to the nearest EMA class centre.

    Score (paper Eq. 6): ``-max_c cos(g(x_obj), mu_c)`` for ``score="cosine"`` (default; ``euclid`` / ``kl``: paper
    Table 4; ``chunk``: the public code's score, whose strength comes almost entirely from its max-tag-probability
    factor: on our tokens on ``fashion``, that factor alone gives 82.05 vs 82.18 average AUROC for the full score).
    **Higher = more OOD.** Images with no kept IND tag follow ``no_tag``, on every split.

    Defaults: tau = 0.5 (paper), cosine score (paper), multiple predicted tags for the training decomposition
    (paper Table 5), CE + MSE to EMA centres. ``preset``: ``small`` (default, CPU-sized) or ``paper`` (the published
    setting; where the paper is silent the public code's: AdamW weight decay 5e-4, cosine to lr 1e-5, MSE weight 0.4
    in mean-MSE units = the paper's 0.1 on the code's MSE summed over 4 chunks, all image tokens at test time,
    uniform tag threshold 0.5; see :data:`tagood.detectors.tagood.config.PRESETS`). Options given explicitly override
    the preset; the training options are :class:`tagood.detectors.tagood.config.TrainOptions`.

    Context at fit: as :class:`tagood.detectors.tagood.centres.CentreDetector`, and ``seed`` (the projector's
    training) and ``device`` (where it trains). Saved (``det.save``): the tag rule with its per-tag thresholds, the
    vocabulary, the resolved no-tag rule, the EMA centres, the projector's configuration and weights and the training
    history. A loaded TagOOD needs nothing of the tagger to score (``attend`` serves the fit only):
    ``tagood.detectors.load(directory, tagood.Context(device=...))`` -- or ``det.attach(context)`` -- puts the
    projector on ``context.device`` (default: the CPU).
    """

    class Options(TrainOptions, CentreOptions):
        @model_validator(mode="after")
        def _chunk_divides_dim(self) -> TagOOD.Options:
            if self.score == "chunk" and self.dim % 4:
                raise PydanticCustomError("chunks", "score=chunk cuts features into 4 chunks: dim must be a multiple of 4")
            return self

    options: Options
    #: where the centres come from: ``ema`` (the EMA centres of training) or ``mean`` (class means of the trained
    #: projector's training features: (CE)+CS)
    centres_from: ClassVar[str] = "ema"
    #: the projector trains data-parallel under torchrun (each rank its shard): every rank fits
    fit_collective: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        #: the projector's training setting (the seed is ``Context.seed``, given at fit)
        self.train_cfg = TrainConfig(**self.options.model_dump(include=set(TrainOptions.model_fields)))
        self.model: Projector | None = None
        self.history: list[dict[str, float]] = []

    def _attach(self, context: Context) -> None:
        super()._attach(context)
        if self.model is not None:
            self.model = self.model.to(self.device).eval()

    def _fit_centres(self, tokens: TokenSet, labels: np.ndarray, num_classes: int, num_positions: int,
                     context: Context) -> np.ndarray:
        """Train the projector on the object tokens (seed ``context.seed``); the EMA centres, or the class means of
        its training features (``centres_from="mean"``)."""
        cfg = self.train_cfg.with_(seed=context.seed)
        self.model, centres, self.history = train_projector(tokens, labels, num_classes, num_positions, cfg, self.device)
        if self.centres_from == "ema":
            return centres.cpu().numpy().astype(np.float32)
        feats = embed_features(self.model, tokens, device=self.device)
        return class_means(feats, labels, num_classes)

    def _embed(self, tokens: TokenSet) -> np.ndarray:
        """The projector's feature of each image's token set, ``(N, dim)`` float32."""
        assert self.model is not None
        return embed_features(self.model, tokens, device=self.device)

    # -- saving --------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """:meth:`CentreDetector._state`, the projector (configuration and weights, as trained) and the history."""
        assert self.model is not None
        arrays, meta = super()._state()
        arrays.update(persist.module_arrays("projector", self.model))
        return arrays, {**meta, "projector": self.model.config, "history": self.history}

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        super()._set_state(arrays, meta)
        self.history = [dict(h) for h in meta.get("history") or []]
        model = Projector(**meta["projector"])
        model.load_state_dict(persist.module_state(arrays, "projector"))
        self.model = model.to(self.device).eval()
