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

Score (ours, **higher = more OOD**): the negative of NegLabel's IND softmax share over IND + CSP labels
(:func:`tagood.detectors.vlm.neglabel.score`). Zero-shot, like NegLabel: the pool is mined from the text encoder
alone and saved with the detector.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from tagood.backbones.prompts import fill
from tagood.core.context import Context
from tagood.core.validation import OpenFraction, PosFloat
from tagood.detectors.registry import register
from tagood.detectors.vlm.neglabel import GroupedShareOptions, NegativeShareDetector, random_groups
from tagood.detectors.vlm.negmining import MiningOptions, mine_fraction, text_embeddings
from tagood.errors import ConfigError

log = logging.getLogger(__name__)

PAPER = ("Chen, Gao & Xu, Conjugated Semantic Pool Improves OOD Detection with Pre-trained Vision-Language Models, "
         "NeurIPS 2024")

#: CSP's 14 superclass words (paper section 3; released code), modified by adjectives.
CSP_SUPERCLASSES: tuple[str, ...] = ("environment", "space", "object", "scene", "place", "item", "area", "view",
                                     "thing", "pattern", "structure", "landscape", "vista", "creature")
#: WordNet lexicographer files CSP's released ImageNet config leaves out of the pool.
CSP_EXCLUDED_LEXFILES: tuple[str, ...] = ("noun.person", "noun.quantity", "noun.group", "adj.pert")


def conjugated_labels(adjectives: Sequence[str], superclasses: Sequence[str] = CSP_SUPERCLASSES,
                      seed: int = 0) -> list[str]:
    """One conjugated semantic label ``"<adjective> <superclass>"`` per adjective, the superclass drawn at
    random (seeded) as in CSP's released code.

    Args:
        adjectives: the adjectives; ``superclasses``: the words they modify; ``seed``: the draw's seed.
    Returns:
        ``len(adjectives)`` labels, deterministic for a given ``seed``.
    """
    if not superclasses:
        raise ConfigError("CSP needs at least one superclass word (option superclasses)")
    pick = np.random.default_rng(seed).integers(0, len(superclasses), len(adjectives))
    return [f"{a} {superclasses[int(k)]}" for a, k in zip(adjectives, pick, strict=True)]


def csp_pool(nouns: Sequence[str] | None = None, adjectives: Sequence[str] | None = None,
             superclasses: Sequence[str] = CSP_SUPERCLASSES, exclude: Sequence[str] = CSP_EXCLUDED_LEXFILES,
             seed: int = 0) -> tuple[list[str], list[str]]:
    """CSP's two candidate pools, from WordNet (``$TAGOOD_WORDNET`` or /usr/share/wordnet, lexicographer files
    ``exclude`` left out) unless word lists are given.

    Args:
        nouns: noun candidates (None = WordNet's); ``adjectives``: adjectives to conjugate (None = WordNet's).
        superclasses: the superclass words; ``exclude``: WordNet lexicographer files left out; ``seed``: the
            superclass draw's seed.
    Returns:
        ``(nouns, conjugated labels)``, duplicates removed.
    """
    from tagood.detectors.vlm.wordnet import wordnet_words_by_lexfile

    ex = tuple(exclude)
    if nouns is None:
        nouns = wordnet_words_by_lexfile("noun", tuple(e for e in ex if e.startswith("noun.")))
    if adjectives is None:
        adjectives = wordnet_words_by_lexfile("adj", tuple(e for e in ex if e.startswith("adj.")))
    return list(dict.fromkeys(nouns)), conjugated_labels(list(dict.fromkeys(adjectives)), superclasses, seed)


@register("csp")
class CSP(NegativeShareDetector):
    """CSP (Chen et al., NeurIPS 2024): NegLabel's score with the conjugated semantic pool, higher = more OOD.
    Zero-shot. ``max_candidates`` subsamples the two pools together (in proportion to their sizes, seeded) to bound
    the one-off text encoding on a CPU (none = all, ~115k prompts)."""

    class Options(MiningOptions, GroupedShareOptions):
        ratio: OpenFraction = Field(0.15, description="share of each pool (nouns, conjugated labels) kept, farthest "
                                                      "from the IND labels first (the paper: 0.15)")
        max_sim: PosFloat = Field(0.95, description="a candidate whose cosine to an IND label exceeds this is a "
                                                    "near-duplicate and never kept (above 1: no cut)")
        superclasses: list[str] | None = Field(None, description="the superclass words the adjectives modify (none = "
                                                                 "CSP's 14: environment, space, object, ...)")
        exclude: list[str] | None = Field(None, description="WordNet lexicographer files left out of the pools (none = "
                                                            "noun.person, noun.quantity, noun.group, adj.pert)")
        nouns: list[str] | None = Field(None, description="noun candidates instead of WordNet's")
        adjectives: list[str] | None = Field(None, description="adjectives to conjugate instead of WordNet's")

    options: Options
    paper: ClassVar[str] = PAPER

    def _clear(self) -> None:
        super()._clear()
        #: how many kept negative labels are nouns, and conjugated labels (in this order in ``neg_words``)
        self.n_noun = self.n_conj = 0

    def _build(self, context: Context) -> None:
        super()._build(context)  # the IND prompts
        enc = self._encoder(context)
        o = self.options
        assert self.text is not None
        superclasses = tuple(o.superclasses) if o.superclasses else CSP_SUPERCLASSES
        exclude = tuple(o.exclude) if o.exclude is not None else CSP_EXCLUDED_LEXFILES
        nouns, conj = csp_pool(o.nouns, o.adjectives, superclasses, exclude, o.seed)
        ind_low = {c.lower().replace("_", " ") for c in self.class_names}
        nouns = [w for w in nouns if w.lower() not in ind_low]
        if o.max_candidates is not None and len(nouns) + len(conj) > o.max_candidates:
            rng = np.random.default_rng(o.seed)
            k_n = int(round(o.max_candidates * len(nouns) / (len(nouns) + len(conj))))
            k_c = int(o.max_candidates) - k_n
            nouns = [nouns[i] for i in np.sort(rng.choice(len(nouns), min(k_n, len(nouns)), replace=False))]
            conj = [conj[i] for i in np.sort(rng.choice(len(conj), min(k_c, len(conj)), replace=False))]
        if not nouns and not conj:
            raise ConfigError("csp: both candidate pools are empty; give nouns / adjectives or install WordNet")
        words: list[str] = []
        embeds: list[np.ndarray] = []
        for kind, pool in (("noun", nouns), ("conjugated", conj)):
            if not pool:
                continue
            emb = text_embeddings(enc, fill(pool, self.templates[0]), desc=f"encode CSP {kind} candidates")
            idx = mine_fraction(emb, self.text, o.ratio, o.eta, o.max_sim)
            words += [pool[i] for i in idx]
            embeds.append(emb[idx])
            if kind == "noun":
                self.n_noun = len(idx)
            else:
                self.n_conj = len(idx)
        log.info("CSP: kept %d nouns and %d conjugated labels (ratio %.2f of %d + %d candidates)",
                 self.n_noun, self.n_conj, o.ratio, len(nouns), len(conj))
        if not words:
            raise ConfigError(f"csp: no negative label kept (ratio={o.ratio} of {len(nouns)} + {len(conj)} candidates; every "
                              f"candidate within cosine {o.max_sim} of an IND label is dropped): raise ratio, max_sim or "
                              "max_candidates, or check the text encoder")
        self.neg_words, self.neg_text = words, np.concatenate(embeds)
        self.groups = random_groups(len(words), o.ngroup, o.seed)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """NegLabel's state and the noun / conjugated-label counts."""
        arrays, meta = super()._state()
        meta.update(n_noun=self.n_noun, n_conj=self.n_conj)
        return arrays, meta

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        super()._set_state(arrays, meta)
        self.n_noun, self.n_conj = int(meta["n_noun"]), int(meta["n_conj"])
