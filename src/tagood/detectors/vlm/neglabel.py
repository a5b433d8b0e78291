"""NegLabel (Jiang, Liu, Zhao, Ji, Fang, Wang, Wang, Kwok, Han, "Negative Label Guided OOD Detection with
Pretrained Vision-Language Models", ICLR 2024).

Negative labels: ``n_neg = 10,000`` WordNet nouns + adjectives mined by NegMining (``eta = 0.05``;
:mod:`tagood.detectors.vlm.negmining`). Confidence: the share of softmax mass on the IND labels,
``S(x) = sum_i e^{cos(x,y_i)/tau} / (sum_i e^{cos(x,y_i)/tau} + sum_j e^{cos(x,neg_j)/tau})`` with ``tau = 0.01``;
with grouping (paper default ``ngroup = 100``) the negative labels are split at random into groups, the confidence
computed against each group and averaged. Score (ours, **higher = more OOD**): ``-S(x)``, in ``[-1, 0]``.

Zero-shot: the negative labels are mined from the text encoder alone (``requires_fit`` is False); they are state
(saved with the detector).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from tagood.backbones.prompts import encode_prompts
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.numeric import l2_normalize
from tagood.core.validation import PosFloat, PosInt
from tagood.detectors.base import NotFittedError
from tagood.detectors.options import DetectorOptions
from tagood.detectors.registry import register
from tagood.detectors.vlm.base import VLMDetector, VLMOptions
from tagood.detectors.vlm.negmining import NegativeLabelOptions, negative_labels

PAPER = ("Jiang, Liu, Zhao, Ji, Fang, Wang, Wang, Kwok & Han, Negative Label Guided OOD Detection with Pretrained "
         "Vision-Language Models, ICLR 2024")


def ind_share(image_embeds: np.ndarray, ind_text: np.ndarray, neg_text: np.ndarray, tau: float = 0.01,
              groups: list[np.ndarray] | None = None, chunk: int = 4096) -> np.ndarray:
    """NegLabel's confidence: the IND softmax share over IND + negative labels, averaged over ``groups``.

    Args:
        image_embeds: ``(N, E)`` image embeddings; ``ind_text``: ``(C, E)`` IND and ``neg_text``: ``(M, E)`` negative
            label embeddings (all normalised here).
        tau: softmax temperature (the paper: 0.01).
        groups: index arrays into ``neg_text`` (None = one group of all).
        chunk: images per block.
    Returns:
        ``(N,)`` float64 confidences in ``[0, 1]``: **higher = more IND** (NegLabel's score is its negative).
    """
    x = l2_normalize(image_embeds)
    yi, yn = l2_normalize(ind_text), l2_normalize(neg_text)
    groups = groups if groups is not None else [np.arange(len(yn))]
    out = np.empty(len(x), dtype=np.float64)
    for a in range(0, len(x), chunk):
        xa = x[a : a + chunk]
        out[a : a + chunk] = grouped_share(xa @ yi.T / tau, xa @ yn.T / tau, groups)
    return out


def grouped_share(z_ind: np.ndarray, z_neg: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """NegLabel's IND share from logits: ``mean_g sum_i e^{z_i} / (sum_i e^{z_i} + sum_{j in g} e^{z_j})``.

    Args:
        z_ind: ``(B, C)`` IND logits; ``z_neg``: ``(B, M)`` negative-label logits.
        groups: index arrays into the columns of ``z_neg``.
    Returns:
        ``(B,)`` float64 shares (higher = more IND).
    """
    m = np.maximum(z_ind.max(axis=1), z_neg.max(axis=1) if z_neg.shape[1] else -np.inf)[:, None]
    si = np.exp(z_ind - m).sum(axis=1)
    en = np.exp(z_neg - m)
    acc = np.zeros(len(z_ind))
    for g in groups:
        acc += si / (si + en[:, g].sum(axis=1))
    return acc / len(groups)


def random_groups(n: int, ngroup: int, seed: int = 0) -> list[np.ndarray]:
    """Split ``0..n-1`` at random (seeded) into ``ngroup`` near-equal sorted groups (NegLabel's grouping strategy)."""
    ngroup = max(1, min(int(ngroup), n)) if n else 1
    return [np.sort(g) for g in np.array_split(np.random.default_rng(seed).permutation(n), ngroup)]


def score(image_embeds: np.ndarray, ind_text: np.ndarray, neg_text: np.ndarray, tau: float = 0.01,
          groups: list[np.ndarray] | None = None) -> np.ndarray:
    """NegLabel OOD score: minus the grouped IND share (:func:`ind_share`), **higher = more OOD**.

    Args:
        image_embeds: ``(N, E)``; ``ind_text``: ``(C, E)``; ``neg_text``: ``(M, E)``; ``tau``: temperature;
        groups: index arrays into ``neg_text`` (:func:`random_groups`; None = one group).
    Returns:
        ``(N,)`` float64 scores in ``[-1, 0]``.
    """
    return -ind_share(image_embeds, ind_text, neg_text, tau, groups)


class GroupedShareOptions(VLMOptions):
    """The options of NegLabel's score (NegLabel, CSP, AdaNeg)."""

    tau: PosFloat = Field(0.01, description="softmax temperature of the IND share (the paper: 0.01, i.e. CLIP's "
                                            "logit scale 100)")
    ngroup: PosInt = Field(100, description="random groups of negative labels the IND share is averaged over "
                                            "(the paper: 100)")


class NegativeShareDetector(VLMDetector):
    """Base of NegLabel and CSP: minus the IND softmax share over the IND and negative labels (:func:`score`), higher
    = more OOD. Zero-shot; a subclass builds the negative labels in ``_build``. State: the IND and negative label
    embeddings, the negative words and the random groups."""

    Options: ClassVar[type[DetectorOptions]] = GroupedShareOptions
    options: GroupedShareOptions
    fit_requires: ClassVar[frozenset[str] | None] = frozenset()  # zero-shot: nothing is learned from train
    requires_fit: ClassVar[bool] = False

    def _clear(self) -> None:
        super()._clear()
        self.neg_words: list[str] = []
        #: ``(M, E)`` float32 negative-label prompt embeddings
        self.neg_text: np.ndarray | None = None
        #: index arrays into ``neg_text`` (:func:`random_groups`)
        self.groups: list[np.ndarray] = []

    def _negatives(self) -> np.ndarray:
        self._prompt_rows()
        if self.neg_text is None:
            raise NotFittedError(f"{self.name} has no negative labels: build them with det.fit or det.attach")
        return self.neg_text

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert data.image_embeds is not None
        return score(data.image_embeds, self._prompt_rows(), self._negatives(), self.options.tau, self.groups)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``text``, ``neg_text``, the groups (``groups``: their indices end to end, ``group_sizes``);
        metadata: the negative labels' words, besides :class:`VLMDetector`'s."""
        arrays, meta = super()._state()
        arrays["neg_text"] = self._negatives()
        arrays["groups"] = np.concatenate(self.groups).astype(np.int64) if self.groups else np.zeros(0, np.int64)
        arrays["group_sizes"] = np.asarray([len(g) for g in self.groups], dtype=np.int64)
        meta["neg_words"] = list(self.neg_words)
        return arrays, meta

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        super()._set_state(arrays, meta)
        self.neg_text = np.asarray(arrays["neg_text"])
        self.neg_words = [str(w) for w in meta["neg_words"]]
        ends = np.cumsum(arrays["group_sizes"])
        self.groups = list(np.split(np.asarray(arrays["groups"]), ends[:-1])) if len(ends) else []
        if len(self.neg_words) != len(self.neg_text):
            raise ValueError(f"{len(self.neg_words)} negative words for {len(self.neg_text)} embeddings")


@register("neglabel")
class NegLabel(NegativeShareDetector):
    """NegLabel (Jiang et al., ICLR 2024): minus the IND softmax share over IND + mined negative labels, higher =
    more OOD. Zero-shot (``requires_fit`` is False). ``max_candidates`` bounds the one-off encoding of the ~140k
    WordNet lemmas (minutes on a CPU, cached afterwards); ``neg_words`` skips mining. See :func:`score`."""

    class Options(NegativeLabelOptions, GroupedShareOptions):
        pass

    options: Options
    paper: ClassVar[str] = PAPER

    def _build(self, context: Context) -> None:
        super()._build(context)
        enc = self._encoder(context)
        o = self.options
        assert self.text is not None
        if o.neg_words:
            self.neg_words, self.neg_text = list(o.neg_words), encode_prompts(enc, o.neg_words, self.templates)
        else:
            self.neg_words, self.neg_text = negative_labels(enc, self.class_names, self.text, o.n_neg, o.eta, o.corpus,
                                                            self.templates[0], o.max_candidates, o.seed)
        self.groups = random_groups(len(self.neg_words), o.ngroup, o.seed)
