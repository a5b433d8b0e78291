"""Scoring against IND class centres after the decomposition: what TagOOD, CS and (CE)+CS share.

TagOOD (Li et al., "TagOOD: A Novel Approach to Out-of-Distribution Detection via Vision-Language Representations
and Class Center Learning", ACM MM 2024) cuts each image's tokens down to its object tokens (section 3.3), turns
them into one feature ``f(x)`` and scores the distance to the nearest IND class centre ``mu_c`` (Eq. 6):

    ``score(x) = -max_c cos(f(x), mu_c)``  -- **higher = more OOD**

(or ``euclid`` / ``kl`` / ``chunk``, :func:`tagood.detectors.tagood.scores.centre_score`). :class:`CentreDetector`
does this with ``f`` = the mean of the object tokens and ``mu_c`` = the class means of the training features (the
``cs`` ablation); :class:`tagood.detectors.tagood.method.TagOOD` replaces ``f`` by a trained projector.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.ragged import TokenSetSink
from tagood.core.types import TagAttention, TokenSet
from tagood.detectors.tagood.config import DETECTOR_PRESETS, PRESETS
from tagood.detectors.tagood.decompose import mean_tokens, select_tokens
from tagood.detectors.tagood.inputs import labels_of, tag_attention_of, tag_probs_of, tokens_of
from tagood.detectors.tagood.scores import NO_TAG_SCORE, centre_score
from tagood.detectors.tagood.tagbase import TagDetector

__all__ = ["CentreDetector", "CentreOptions", "class_means"]

log = logging.getLogger(__name__)


class CentreOptions(TagDetector.Options):
    """The options of the detectors that score against class centres (TagOOD, CS, (CE)+CS). The ``preset`` fills
    the options it fixes that are not given (or given as none): ``test_tokens``, ``tag_threshold`` and, for a
    detector with a projector, its training options (:data:`tagood.detectors.tagood.config.PRESETS`)."""

    score: Literal["cosine", "chunk", "euclid", "kl"] = Field(
        "cosine", description="distance to the nearest class centre: cosine (the paper), euclid, kl (paper Table 4) or "
                              "chunk (the public code's: 4 chunks x the max kept-tag probability)")
    test_tokens: Literal["object", "all"] = Field(
        "object", description="tokens scored at test time: object (the decomposition) or all image tokens "
                              "(preset paper: all)")
    tags: Literal["pred", "gt"] = Field(
        "pred", description="tags decomposing the training images: pred (predicted IND tags, the paper) or gt (the "
                            "class's vocabulary tag)")
    preset: Literal["small", "paper"] = Field(
        "small", description="small (CPU-sized, the defaults shown) or paper (the published setting) for the options "
                             "not given")

    @classmethod
    def preset_values(cls, preset: str) -> dict[str, Any]:
        """The values ``preset`` gives to the options of this model that are not given.

        Args:
            preset: ``small`` or ``paper``.
        Returns:
            Option name -> value.
        """
        values = {**PRESETS[preset].model_dump(exclude={"seed"}), **DETECTOR_PRESETS[preset]}
        return {k: v for k, v in values.items() if k in cls.model_fields}

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        preset = data.get("preset", "small")
        if preset not in PRESETS:  # the field's own check names the choices
            return data
        fill = cls.preset_values(preset)
        return {**fill, **{k: v for k, v in data.items() if not (v is None and k in fill)}}


class CentreDetector(TagDetector):
    """Object tokens -> feature -> distance to the nearest IND class centre (higher = more OOD).

    Here the feature is the mean of the object tokens and the centres are the class means of the training
    features; subclasses change both (:meth:`_fit_centres`, :meth:`_embed`). Images with no kept IND tag follow
    ``no_tag`` (:class:`tagood.detectors.tagood.tagbase.TagDetector`), on every split.

    Context at fit: ``device``, ``class_names`` / ``tag_names`` (vocabulary reports), ``tag_thresholds`` (used when
    ``tag_threshold`` is None), ``attend`` (``tags="gt"``: the ground-truth tag's attention recomputed from the cached
    tokens) and ``work_dir`` (where a streamed split's object tokens are kept while fitting). Saved: the tag rule
    with its thresholds, the vocabulary, the resolved no-tag rule and the centres; nothing of the tagger is needed
    again to score a loaded one.
    """

    Options = CentreOptions
    options: CentreOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.centres: np.ndarray | None = None
        #: the torch device features are computed on (``Context.device``, from fit or ``attach``)
        self.device = "cpu"

    @property
    def score_kind(self) -> str:
        """The score against the centres (option ``score``)."""
        return str(self.options.score)

    @property
    def test_tokens(self) -> str:
        """The tokens scored at test time (option ``test_tokens``, after the preset)."""
        return str(self.options.test_tokens)

    @property
    def tags(self) -> str:
        """The tags of the training decomposition (option ``tags``)."""
        return str(self.options.tags)

    def _attach(self, context: Context) -> None:
        self.device = context.device

    # -- fitting -------------------------------------------------------------------------------
    def _train_keep(self, train: FeatureSet, attend: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
                    ) -> tuple[FeatureSet, np.ndarray]:
        """Training decomposition: predicted IND tags (``pred``) or the class's vocabulary tag (``gt``)."""
        assert self.vocab is not None
        if self.tags == "pred":
            keep = self.kept_tags(train)
            return train, keep
        gt = np.array([self.vocab.class_tags[int(y)][0] for y in labels_of(train, self.name)])
        if attend is not None:  # the tagger recomputes the GT tag's attention from the cached tokens
            maps = attend(tokens_of(train, self.name).pad()[0], gt[:, None])
            return train.with_(tag_attention=TagAttention(gt[:, None], maps)), np.ones((len(gt), 1), bool)
        slot = tag_attention_of(train, self.name).ids == gt[:, None]
        missing = ~slot.any(axis=1)
        if missing.any():
            log.warning("tags=gt: the ground-truth tag is not among the stored tags of %d images and the tagger cannot "
                        "recompute attention; those images use their predicted IND tags", int(missing.sum()))
        keep = slot | (missing[:, None] & self.kept_tags(train))
        return train, keep

    def _decompose_train(self, train: FeatureSet, context: Context, directory: str | None) -> tuple[TokenSet, np.ndarray, int]:
        """(object tokens, has_tag, number of token positions) of the training split, chunk by chunk.

        A streamed split writes its object tokens to ``directory`` (memory-mapped for training)."""
        from tagood.runtime.progress import progress_bar

        sink = TokenSetSink(directory if train.is_streamed() else None, name="train-object-tokens")
        has_parts: list[np.ndarray] = []
        n_pos = 0
        with progress_bar(f"{self.name}: decompose IND train", total=len(train), unit="img") as advance:
            for chunk in train.iter_chunks():
                source, keep = self._train_keep(chunk, context.attend)
                mask, has = self._object_tokens(source, keep)
                tokens = tokens_of(chunk, self.name)
                sink.append(select_tokens(tokens, mask))
                has_parts.append(has)
                n_pos = max(n_pos, int(tokens.positions.max()) + 1)
                advance(len(has))
        return sink.finish(), np.concatenate(has_parts), n_pos

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.rule = self._rule_for(context)
        self.vocab = self._build_vocab(train, context)
        work = context.work_dir
        if work is not None:
            Path(work).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tagood-train-", dir=work) as tmp:
            obj_tokens, has, n_pos = self._decompose_train(train, context, tmp)
            log.info("TagOOD training decomposition: %.1f tokens/image kept (tau=%s), %d of %d images without a kept "
                     "IND tag use all tokens", float(obj_tokens.lengths.mean()), self.tau, int((~has).sum()), len(has))
            labels = np.asarray(labels_of(train, self.name))
            self.centres = self._fit_centres(obj_tokens, labels, int(labels.max()) + 1, n_pos, context)
            del obj_tokens  # release the memory-maps before the directory goes

    def _fit_centres(self, tokens: TokenSet, labels: np.ndarray, num_classes: int, num_positions: int,
                     context: Context) -> np.ndarray:
        """The class centres ``(C, d)`` from the training images' object tokens: the class means of their means."""
        return class_means(mean_tokens(tokens), labels, num_classes)

    # -- scoring -------------------------------------------------------------------------------
    def _embed(self, tokens: TokenSet) -> np.ndarray:
        """The feature of each image's (object) token set: their mean, ``(N, D)`` float64."""
        return mean_tokens(tokens)

    def _masks(self, data: FeatureSet, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps = tag_attention_of(data, self.name).maps
        if self.test_tokens == "all":
            n_tokens = int(np.asarray(maps).shape[-1])
            return np.ones((len(keep), n_tokens), dtype=bool), np.asarray(keep.any(axis=1))
        return self._object_tokens(data, keep)

    def features(self, data: FeatureSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The test features of one in-memory chunk.

        The tokens are those of :meth:`token_masks`. The tag factor (used by ``score=chunk`` only) is the max kept
        IND-tag probability; for an image without a kept IND tag (scored under ``no_tag="fallback"``) it is its max
        IND-vocabulary tag probability, thresholds ignored.

        Args:
            data: the chunk.
        Returns:
            ``(features (N,d), has_tag (N,), tag probability factor (N,))``.
        """
        assert self.vocab is not None
        keep = self.kept_tags(data)
        mask, has = self._masks(data, keep)
        all_tokens = tokens_of(data, self.name)
        tokens = all_tokens if self.test_tokens == "all" else select_tokens(all_tokens, mask)
        feats = self._embed(tokens)
        p = self.max_tag_prob(data, keep)
        if not has.all():
            p[~has] = np.asarray(tag_probs_of(data, self.name), dtype=np.float64)[~has][:, self.vocab.tags].max(axis=1)
        return feats, has, p

    def _score(self, data: FeatureSet) -> np.ndarray:
        """Higher = more OOD. Images without a kept IND tag: ``NO_TAG_SCORE`` under ``no_tag="ood"``,
        their all-token score under ``no_tag="fallback"`` -- on every split alike."""
        assert self.centres is not None
        feats, has, p = self.features(data)
        s = centre_score(feats, self.centres, self.score_kind, tag_prob=p)
        if self.no_tag == "ood":
            s[~has] = NO_TAG_SCORE
        return s

    # -- saving --------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """:meth:`TagDetector._state` and the class centres (in their fitted dtype)."""
        assert self.centres is not None
        arrays, meta = super()._state()
        arrays["centres"] = self.centres
        return arrays, meta

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        super()._set_state(arrays, meta)
        self.centres = np.asarray(arrays["centres"])


def class_means(feats: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The mean feature of each IND class: the centres of CS and (CE)+CS.

    Args:
        feats: ``(N, d)`` features of the training images.
        labels: their IND class ids.
        num_classes: the number of IND classes.
    Returns:
        ``(num_classes, d)`` float32 centres.
    """
    return np.stack([np.asarray(feats)[labels == c].mean(axis=0) for c in range(num_classes)]).astype(np.float32)
