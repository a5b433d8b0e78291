"""CSP: the Conjugated Semantic Pool (Chen, Gao, Xu, "Conjugated Semantic Pool Improves OOD Detection with
Pre-trained Vision-Language Models", NeurIPS 2024).

CSP keeps NegLabel's score (Jiang et al., ICLR 2024; :mod:`tagood.detectors.vlm.neglabel`) and enlarges its pool of
negative labels. Beside the WordNet nouns (NegLabel's pool) it adds *conjugated semantic labels*: superclass
names modified by adjectives ("modified superclass names", e.g. "glossy object", "arid landscape"). Such a
label names no single object but a cluster of features of many objects, so it is farther from any IND class
than a noun yet closer to real OOD images; this is the paper's argument for why the enlarged pool lowers
FPR95 (ImageNet-1K, CLIP ViT-B/16, 4-set average: NegLabel 25.40 -> CSP 17.51 FPR95).

Construction (facts read from the paper and its released code, defaults as there):

* superclass words (14): environment, space, object, scene, place, item, area, view, thing, pattern,
  structure, landscape, vista, creature;
* every WordNet adjective gets **one** conjugated label ``"<adjective> <superclass>"``, its superclass drawn
  at random (seeded);
* WordNet lexicographer files left out of the pool: ``noun.person``, ``noun.quantity``, ``noun.group``
  and ``adj.pert`` (relational adjectives);
* the nouns and the conjugated labels are mined **separately** with NegMining's distance (0.95-quantile of
  the cosine to the IND labels, i.e. ``eta = 0.05`` of ``-cos``) and the farthest ``ratio = 0.15`` of each
  kept; a candidate whose largest cosine to an IND label exceeds 0.95 is never kept;
* score as NegLabel: ``tau = 0.01`` (CLIP logits 100 x cosine), ``ngroup = 100`` random groups.

The released code encodes nouns with an 8-prompt ensemble and conjugated labels with a 4-prompt one; here
both are encoded with the detector's prompt template(s) as NegLabel's negatives are, so that CSP and
NegLabel differ only in their pools (a documented deviation; pass ``templates=`` to change both).

Score (ours, **higher = more OOD**): the negative of NegLabel's IND softmax share over IND + CSP labels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from tagood.backbones.prompts import fill
from tagood.detectors.registry import register
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context
from tagood.detectors.vlm.neglabel import NegLabel, random_groups
from tagood.detectors.vlm.negmining import mine_fraction, text_embeddings

log = logging.getLogger(__name__)

#: CSP's 14 superclass words (paper section 3; released code), modified by adjectives.
CSP_SUPERCLASSES: tuple[str, ...] = ("environment", "space", "object", "scene", "place", "item", "area", "view",
                                     "thing", "pattern", "structure", "landscape", "vista", "creature")
#: WordNet lexicographer files CSP's released ImageNet config leaves out of the pool.
CSP_EXCLUDED_LEXFILES: tuple[str, ...] = ("noun.person", "noun.quantity", "noun.group", "adj.pert")


def conjugated_labels(adjectives: Sequence[str], superclasses: Sequence[str] = CSP_SUPERCLASSES,
                      seed: int = 0) -> list[str]:
    """One conjugated semantic label ``"<adjective> <superclass>"`` per adjective, the superclass drawn at
    random (seeded) as in CSP's released code. Deterministic for a given ``seed``."""
    if not superclasses:
        raise ValueError("CSP needs at least one superclass word")
    pick = np.random.default_rng(seed).integers(0, len(superclasses), len(adjectives))
    return [f"{a} {superclasses[int(k)]}" for a, k in zip(adjectives, pick)]


def csp_pool(nouns: Sequence[str] | None = None, adjectives: Sequence[str] | None = None,
             superclasses: Sequence[str] = CSP_SUPERCLASSES, exclude: Sequence[str] = CSP_EXCLUDED_LEXFILES,
             seed: int = 0) -> tuple[list[str], list[str]]:
    """``(nouns, conjugated labels)``: CSP's two candidate pools, from WordNet (``$TAGOOD_WORDNET`` or
    /usr/share/wordnet, lexicographer files ``exclude`` left out) unless word lists are given."""
    from tagood.detectors.vlm.wordnet import wordnet_words_by_lexfile

    ex = tuple(exclude)
    if nouns is None:
        nouns = wordnet_words_by_lexfile("noun", tuple(e for e in ex if e.startswith("noun.")))
    if adjectives is None:
        adjectives = wordnet_words_by_lexfile("adj", tuple(e for e in ex if e.startswith("adj.")))
    return list(dict.fromkeys(nouns)), conjugated_labels(list(dict.fromkeys(adjectives)), superclasses, seed)


@register("csp")
class CSP(NegLabel):
    """CSP (Chen et al., NeurIPS 2024): NegLabel with the conjugated semantic pool. Higher score = more OOD.

    Hyperparameters (paper / released-code defaults): ``ratio=0.15`` (share of each pool kept), ``eta=0.05``,
    ``max_sim=0.95``, ``tau=0.01``, ``ngroup=100``, ``superclasses`` (the 14 words of
    :data:`CSP_SUPERCLASSES`), ``exclude`` (:data:`CSP_EXCLUDED_LEXFILES`); ``nouns`` / ``adjectives``: word
    lists instead of WordNet's; ``max_candidates``: a seeded subsample of the two pools together (in
    proportion to their sizes) to bound the one-off text encoding on CPU (None = all, ~115k prompts).
    """

    def __init__(self, ratio: float = 0.15, eta: float = 0.05, tau: float = 0.01, ngroup: int = 100,
                 max_sim: float = 0.95, superclasses: Sequence[str] | None = None,
                 exclude: Sequence[str] | None = None, nouns: list[str] | None = None,
                 adjectives: list[str] | None = None, max_candidates: int | None = None, seed: int = 0,
                 **hparams: Any) -> None:
        super().__init__(eta=eta, tau=tau, ngroup=ngroup, max_candidates=max_candidates, seed=seed, **hparams)
        self.hparams.pop("n_neg", None)
        self.hparams.pop("corpus", None)
        self.hparams.update(ratio=ratio, max_sim=max_sim, superclasses=superclasses, exclude=exclude)
        self.ratio, self.max_sim = float(ratio), float(max_sim)
        self.superclasses = tuple(superclasses) if superclasses else CSP_SUPERCLASSES
        self.exclude = tuple(exclude) if exclude is not None else CSP_EXCLUDED_LEXFILES
        self.given_nouns, self.given_adjectives = nouns, adjectives
        self.n_noun = self.n_conj = 0

    def _fit(self, train: FeatureSet, context: Context) -> None:
        super(NegLabel, self)._fit(train, context)  # IND prompts only; the pool is CSP's
        enc = self._encoder(context)
        assert self.text is not None
        nouns, conj = csp_pool(self.given_nouns, self.given_adjectives, self.superclasses, self.exclude, self.seed)
        ind_low = {c.lower().replace("_", " ") for c in self.class_names}
        nouns = [w for w in nouns if w.lower() not in ind_low]
        if self.max_candidates is not None and len(nouns) + len(conj) > self.max_candidates:
            rng = np.random.default_rng(self.seed)
            k_n = int(round(self.max_candidates * len(nouns) / (len(nouns) + len(conj))))
            k_c = int(self.max_candidates) - k_n
            nouns = [nouns[i] for i in np.sort(rng.choice(len(nouns), min(k_n, len(nouns)), replace=False))]
            conj = [conj[i] for i in np.sort(rng.choice(len(conj), min(k_c, len(conj)), replace=False))]
        if not nouns and not conj:
            raise ValueError("csp: both candidate pools are empty; give nouns / adjectives or install WordNet")
        words: list[str] = []
        embeds: list[np.ndarray] = []
        for kind, pool in (("noun", nouns), ("conjugated", conj)):
            if not pool:
                continue
            emb = text_embeddings(enc, fill(pool, self.templates[0]), desc=f"encode CSP {kind} candidates")
            idx = mine_fraction(emb, self.text, self.ratio, self.eta, self.max_sim)
            words += [pool[i] for i in idx]
            embeds.append(emb[idx])
            if kind == "noun":
                self.n_noun = len(idx)
            else:
                self.n_conj = len(idx)
        log.info("CSP: kept %d nouns and %d conjugated labels (ratio %.2f of %d + %d candidates)",
                 self.n_noun, self.n_conj, self.ratio, len(nouns), len(conj))
        if not words:
            raise ValueError(f"csp: no negative label kept (ratio={self.ratio} of {len(nouns)} + {len(conj)} candidates; every "
                             f"candidate within cosine {self.max_sim} of an IND label is dropped): raise ratio, max_sim or "
                             "max_candidates, or check the text encoder")
        self.neg_words, self.neg_text = words, np.concatenate(embeds)
        self.groups = random_groups(len(words), self.ngroup, self.seed)
