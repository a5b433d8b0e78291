"""NegLabel (Jiang, Liu, Zhao, Ji, Fang, Wang, Wang, Kwok, Han, "Negative Label Guided OOD
Detection with Pretrained Vision-Language Models", ICLR 2024).

Negative labels: ``n_neg = 10,000`` WordNet nouns + adjectives mined by NegMining
(``eta = 0.05``; :mod:`tagood.detectors.vlm.negmining`). Confidence: the share of softmax mass on the IND
labels, ``sum_i e^{cos(x,y_i)/tau} / (sum_i e^{cos(x,y_i)/tau} + sum_j e^{cos(x,neg_j)/tau})`` with
``tau = 0.01``; with grouping (paper default ``ngroup = 100``) the negative labels are split at
random into groups, the confidence computed against each group and averaged.
Score (ours, **higher = more OOD**): the negative of that confidence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tagood.detectors.registry import register
from tagood.core.numeric import l2_normalize
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context
from tagood.detectors.vlm.base import VLMDetector
from tagood.detectors.vlm.negmining import negative_labels


def ind_share(image_embeds: np.ndarray, ind_text: np.ndarray, neg_text: np.ndarray, tau: float = 0.01,
              groups: list[np.ndarray] | None = None, chunk: int = 4096) -> np.ndarray:
    """NegLabel confidence (N,) float64: IND softmax share over IND + negative labels, averaged over ``groups``
    (index arrays into ``neg_text``; None = one group of all)."""
    x = l2_normalize(image_embeds)
    yi, yn = l2_normalize(ind_text), l2_normalize(neg_text)
    groups = groups if groups is not None else [np.arange(len(yn))]
    out = np.empty(len(x), dtype=np.float64)
    for a in range(0, len(x), chunk):
        xa = x[a : a + chunk]
        out[a : a + chunk] = grouped_share(xa @ yi.T / tau, xa @ yn.T / tau, groups)
    return out


def grouped_share(z_ind: np.ndarray, z_neg: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """NegLabel's IND share from logits: ``mean_g sum_i e^{z_i} / (sum_i e^{z_i} + sum_{j in g} e^{z_j})``, (B,) float64."""
    m = np.maximum(z_ind.max(axis=1), z_neg.max(axis=1) if z_neg.shape[1] else -np.inf)[:, None]
    si = np.exp(z_ind - m).sum(axis=1)
    en = np.exp(z_neg - m)
    acc = np.zeros(len(z_ind))
    for g in groups:
        acc += si / (si + en[:, g].sum(axis=1))
    return acc / len(groups)


def random_groups(n: int, ngroup: int, seed: int = 0) -> list[np.ndarray]:
    """Split ``0..n-1`` at random into ``ngroup`` near-equal groups (NegLabel's grouping strategy)."""
    ngroup = max(1, min(int(ngroup), n)) if n else 1
    return [np.sort(g) for g in np.array_split(np.random.default_rng(seed).permutation(n), ngroup)]


@register("neglabel")
class NegLabel(VLMDetector):
    """NegLabel (Jiang et al., ICLR 2024), zero-shot. Higher score = more OOD.

    Hyperparameters (paper defaults): ``n_neg=10000``, ``eta=0.05``, ``tau=0.01``, ``ngroup=100``;
    ``corpus``: None (WordNet nouns + adjectives), a word-list file, or a list of words;
    ``max_candidates``: subsample the corpus before mining (None = all; the one-off encoding of
    ~140k WordNet lemmas takes minutes on CPU, cached afterwards). ``neg_words`` skips mining.
    """

    def __init__(self, n_neg: int = 10000, eta: float = 0.05, tau: float = 0.01, ngroup: int = 100,
                 corpus: str | Path | list[str] | None = None, max_candidates: int | None = None,
                 neg_words: list[str] | None = None, seed: int = 0, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.hparams.update(n_neg=n_neg, eta=eta, tau=tau, ngroup=ngroup, corpus=corpus, max_candidates=max_candidates, seed=seed)
        self.n_neg, self.eta, self.tau, self.ngroup = int(n_neg), float(eta), float(tau), int(ngroup)
        self.corpus, self.max_candidates, self.seed = corpus, max_candidates, int(seed)
        self.given_neg = list(neg_words) if neg_words else None
        self.neg_words: list[str] = []
        self.neg_text: np.ndarray | None = None
        self.groups: list[np.ndarray] = []

    def _fit(self, train: FeatureSet, context: Context) -> None:
        super()._fit(train, context)
        enc = self._encoder(context)
        assert self.text is not None
        if self.given_neg:
            from tagood.backbones.prompts import encode_prompts

            self.neg_words, self.neg_text = self.given_neg, encode_prompts(enc, self.given_neg, self.templates)
        else:
            self.neg_words, self.neg_text = negative_labels(enc, self.class_names, self.text, self.n_neg, self.eta,
                                                            self.corpus, self.templates[0], self.max_candidates, self.seed)
        self.groups = random_groups(len(self.neg_words), self.ngroup, self.seed)

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert self.text is not None and self.neg_text is not None
        return -ind_share(data.image_embeds, self.text, self.neg_text, self.tau, self.groups)
