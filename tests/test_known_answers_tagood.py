"""Known-answer tests of the TagOOD family's scores (Li et al., "TagOOD: A Novel Approach to Out-of-Distribution
Detection via Vision-Language Representations and Class Center Learning", ACM MM 2024; /work/shared/papers): the
tokens, tags and attention maps are made by hand (three classes of unequal sizes, maps whose minimum is not 0,
images with two kept IND tags, images with none), the decomposition and the scores are re-stated here in float64
from the paper, and no expected value is read from a detector's fitted state (for TagOOD itself only the learned
projector and EMA centres, which no closed form gives, are taken from the detector).

Where each formula comes from:

* decomposition (Sec. 3.3): the attention map of every kept IND tag is min-max normalised, the maps are combined
  (maximum), tokens whose value is above ``tau`` form the object feature; an image without a kept IND tag is OOD
  (Sec. 3.5; ``no_tag="ood"``) or scored with all of its tokens (``no_tag="fallback"``, ours);
* Tag Score (Table 3): the tagger's confidence on the IND vocabulary, ``-max_{t in V} p_t(x)``;
* CS (Table 3): class centre = the mean of the class's object features (mean of the object tokens); score
  ``-max_c cos(f(x), centre_c)`` (Eq. 6);
* (CE)+CS (Table 3): the same with the features of a projector trained with cross-entropy only;
* TagOOD (Sec. 3.4-3.5): EMA centres ``mu_c <- m mu_c + (1 - m) mean_{batch, y = c} g(x)`` (Eq. 4), score Eq. 6;
* the other distances (Table 4): Euclidean ``min_c ||f - mu_c||``, KL ``min_c KL(softmax(mu_c) || softmax(f))``
  (the paper does not define it: the library's reading); ``chunk``: the public code's score (4 chunks, mean
  per-chunk cosine, max over classes, times the max kept-tag probability).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tagood
from tagood.core.types import TagAttention, TokenSet
from tagood.detectors.tagood import NO_TAG_SCORE, centre_score, ema_update, embed
from tagood.detectors.tagood.tagscore import score as tagscore_score

T, D, NTAGS = 6, 8, 20
SIZES = (5, 7, 10)
FIXED = {"vocab": "frequent", "per_class": 1, "tag_threshold": 0.5}


def make_split(seed: int, sizes: tuple[int, ...] = SIZES) -> tuple[tagood.FeatureSet, np.ndarray, np.ndarray,
                                                                   np.ndarray, np.ndarray]:
    """Images of T tokens (D dims); class k's tag is 10 + k (probability 0.9), its object tokens carry +3 in dims
    2k, 2k+1; a second stored tag 19 has probability 0.3 (never kept at threshold 0.5). Attention maps lie in
    [1, 2] with the object tokens at 3-5 (minimum never 0)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(sizes)])
    n = len(labels)
    toks = rng.normal(0.0, 1.0, (n, T, D))
    maps = 1.0 + rng.random((n, 2, T))
    ids = np.zeros((n, 2), np.int64)
    probs = np.full((n, NTAGS), 0.05)
    for i, k in enumerate(labels):
        obj = rng.choice(T, 2, replace=False)
        toks[i, obj, 2 * k : 2 * k + 2] += 3.0
        maps[i, 0, obj] += 2.0 + rng.random(2) * 2.0
        ids[i] = [10 + k, 19]
        probs[i, 10 + k] = 0.9
        probs[i, 19] = 0.3
    fs = tagood.FeatureSet(labels=labels, tokens=TokenSet.from_dense(toks.astype(np.float32)), tag_probs=probs,
                           tag_attention=TagAttention(ids, maps))
    return fs, toks.astype(np.float32).astype(np.float64), ids, maps, probs


def make_test() -> tuple[tagood.FeatureSet, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Test images: (0) class-1-like; (1) two kept IND tags (10 and 12) whose maps are combined; (2) no IND tag
    kept (its 11 at 0.4); (3) only the non-IND tag 19 is confident; (4) class-0-like, tag 10 in the second slot;
    (5) a constant map (min-max gives all ones: every token kept); (6) a map [1, 2, 3, 1, 1, 1]: token 1 sits exactly
    at 0.5 after min-max (not above tau = 0.5), so only token 2 is kept."""
    rng = np.random.default_rng(99)
    toks = rng.normal(0.0, 1.0, (7, T, D))
    toks[0, [1, 4], 2:4] += 3.0
    toks[1, [0], 0:2] += 3.0
    toks[1, [5], 4:6] += 3.0
    toks[4, [2, 3], 0:2] += 3.0
    maps = 1.5 + rng.random((7, 2, T))
    maps[0, 0, [1, 4]] += 3.0
    maps[1, 0, 0] += 4.0
    maps[1, 1, 5] += 2.5
    maps[4, 1, [2, 3]] += 3.0
    maps[5, 0] = 2.0
    maps[6, 0] = [1.0, 2.0, 3.0, 1.0, 1.0, 1.0]
    toks[6, 2, 2:4] += 3.0
    ids = np.array([[11, 19], [10, 12], [11, 19], [19, 11], [19, 10], [12, 19], [11, 19]])
    probs = np.full((7, NTAGS), 0.05)
    probs[0, 11] = 0.8
    probs[1, 10], probs[1, 12] = 0.7, 0.95
    probs[2, 11] = 0.4
    probs[3, 19], probs[3, 11] = 0.99, 0.2
    probs[4, 19], probs[4, 10] = 0.6, 0.85
    probs[5, 12] = 0.75
    probs[6, 11] = 0.9
    fs = tagood.FeatureSet(tokens=TokenSet.from_dense(toks.astype(np.float32)), tag_probs=probs,
                           tag_attention=TagAttention(ids, maps))
    return fs, toks.astype(np.float32).astype(np.float64), ids, maps, probs


# -- the paper's decomposition and scores, written out -----------------------------------------------------------
def kept_slots(ids: np.ndarray, probs: np.ndarray, vocab: set[int], thr: float = 0.5, top_k: int = 10) -> np.ndarray:
    keep = np.zeros(ids.shape, bool)
    for i in range(len(ids)):
        for j in range(min(top_k, ids.shape[1])):
            keep[i, j] = probs[i, ids[i, j]] > thr and int(ids[i, j]) in vocab
    return keep


def object_mask(maps: np.ndarray, keep: np.ndarray, tau: float) -> np.ndarray:
    """Sec. 3.3: min-max each kept map, combine by max, keep tokens above tau; no kept tag: all tokens."""
    mask = np.ones((len(maps), maps.shape[2]), bool)
    for i in range(len(maps)):
        normed = []
        for j in np.flatnonzero(keep[i]):
            m = maps[i, j].astype(np.float64)
            span = m.max() - m.min()
            normed.append((m - m.min()) / span if span > 0 else np.ones_like(m))
        if normed:
            mask[i] = np.max(normed, axis=0) > tau if tau > 0 else True
    return mask


def mean_feats(toks: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.stack([toks[i][mask[i]].mean(axis=0) for i in range(len(toks))])


def cos_score(f: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.array([-max(float(v @ c / np.linalg.norm(v) / np.linalg.norm(c)) for c in centres) for v in f])


def cs_centres(seed: int = 0, tau: float = 0.5) -> np.ndarray:
    _, toks, ids, maps, probs = make_split(seed)
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(SIZES)])
    f = mean_feats(toks, object_mask(maps, kept_slots(ids, probs, {10, 11, 12}), tau))
    return np.stack([f[labels == c].mean(axis=0) for c in range(3)])


# -- Tag Score ----------------------------------------------------------------------------------------------------
def test_tagscore_is_minus_the_best_ind_tag_probability() -> None:
    train = make_split(0)[0]
    test, _, _, _, probs = make_test()
    det = tagood.create("tagscore", **FIXED).fit(train)
    assert sorted(det.vocab.tags.tolist()) == [10, 11, 12]  # precondition: the frequent tag of each class
    want = -probs[:, [10, 11, 12]].max(axis=1)
    np.testing.assert_allclose(det.score(test), want, rtol=1e-15)
    np.testing.assert_allclose(want, [-0.8, -0.95, -0.4, -0.2, -0.85, -0.75, -0.9])
    np.testing.assert_allclose(tagscore_score(probs, [12, 19]), -np.maximum(probs[:, 12], probs[:, 19]))


# -- CS -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.5, 0.2, 0.8, 0.0])
def test_cs_known_answer(tau) -> None:
    train = make_split(0)[0]
    test, toks, ids, maps, probs = make_test()
    det = tagood.create("cs", tau=tau, no_tag="ood", **FIXED).fit(train)
    centres = cs_centres(0, tau)
    keep = kept_slots(ids, probs, {10, 11, 12})
    assert keep.any(axis=1).tolist() == [True, True, False, False, True, True, True]
    mask = object_mask(maps, keep, tau)
    if tau == 0.5:
        assert mask[6].tolist() == [False, False, True, False, False, False]
    want = cos_score(mean_feats(toks, mask), centres)
    want[~keep.any(axis=1)] = NO_TAG_SCORE
    np.testing.assert_allclose(det.score(test), want, rtol=1e-6)
    # sign: the class-1-like image scores lower (more IND) than its tokens with the object dims moved to 6, 7 (no
    # class's dims)
    shuffled = test.with_(tokens=TokenSet.from_dense(toks[:, :, [0, 1, 6, 7, 4, 5, 2, 3]].astype(np.float32)))
    assert det.score(test)[0] < det.score(shuffled)[0]


def test_cs_fallback_scores_untagged_images_with_all_tokens() -> None:
    train = make_split(1)[0]
    test, toks, ids, maps, probs = make_test()
    det = tagood.create("cs", no_tag="fallback", **FIXED).fit(train)
    keep = kept_slots(ids, probs, {10, 11, 12})
    want = cos_score(mean_feats(toks, object_mask(maps, keep, 0.5)), cs_centres(1))
    assert not keep[2].any() and not keep[3].any()
    np.testing.assert_allclose(want[[2, 3]], cos_score(toks[[2, 3]].mean(axis=1), cs_centres(1)), rtol=1e-12)
    np.testing.assert_allclose(det.score(test), want, rtol=1e-6)


def test_cs_top_k_and_threshold_options() -> None:
    """tag_top_k=1: only the first stored tag can be kept (images 3 and 4 lose their IND tag); tag_threshold=0.8:
    image 1 keeps 12 only, image 0 (0.8, not above) none."""
    train = make_split(2)[0]
    test, toks, ids, maps, probs = make_test()
    top1 = tagood.create("cs", no_tag="ood", tag_top_k=1, **FIXED).fit(train)
    keep = kept_slots(ids, probs, {10, 11, 12}, top_k=1)
    assert keep.any(axis=1).tolist() == [True, True, False, False, False, True, True]
    # the training images store their class tag first, so top-1 does not change the centres
    want = cos_score(mean_feats(toks, object_mask(maps, keep, 0.5)), cs_centres(2))
    want[~keep.any(axis=1)] = NO_TAG_SCORE
    np.testing.assert_allclose(top1.score(test), want, rtol=1e-6)
    high = tagood.create("cs", no_tag="fallback", **{**FIXED, "tag_threshold": 0.8}).fit(train)
    keep = kept_slots(ids, probs, {10, 11, 12}, thr=0.8)
    assert keep.tolist() == [[False, False], [False, True], [False, False], [False, False], [False, True],
                             [False, False], [True, False]]
    want = cos_score(mean_feats(toks, object_mask(maps, keep, 0.5)), cs_centres(2))  # train tags are 0.9: unchanged
    np.testing.assert_allclose(high.score(test), want, rtol=1e-6)


def test_cs_test_tokens_all() -> None:
    train = make_split(3)[0]
    test, toks, ids, maps, probs = make_test()
    det = tagood.create("cs", test_tokens="all", no_tag="ood", **FIXED).fit(train)
    keep = kept_slots(ids, probs, {10, 11, 12})
    want = cos_score(toks.mean(axis=1), cs_centres(3))
    want[~keep.any(axis=1)] = NO_TAG_SCORE
    np.testing.assert_allclose(det.score(test), want, rtol=1e-6)


def test_cs_ground_truth_tags_for_training() -> None:
    """tags=gt: a training image decomposes with its class's vocabulary tag even when the tagger does not keep it
    (here: two images per class with the class tag at 0.3); pred: those images use all of their tokens."""
    train, toks, ids, maps, probs = make_split(4)
    probs = probs.copy()
    labels = np.asarray(train.labels)
    weak = np.concatenate([np.flatnonzero(labels == c)[:2] for c in range(3)])
    probs[weak, 10 + labels[weak]] = 0.3
    train = train.with_(tag_probs=probs)
    test, ttoks, tids, tmaps, tprobs = make_test()
    gt_keep = np.zeros(ids.shape, bool)
    gt_keep[:, 0] = True  # the class tag is stored in slot 0
    for tags, keep in (("gt", gt_keep), ("pred", kept_slots(ids, probs, {10, 11, 12}))):
        det = tagood.create("cs", tags=tags, no_tag="fallback", **FIXED).fit(train)
        f = mean_feats(toks, object_mask(maps, keep, 0.5))
        centres = np.stack([f[labels == c].mean(axis=0) for c in range(3)])
        want = cos_score(mean_feats(ttoks, object_mask(tmaps, kept_slots(tids, tprobs, {10, 11, 12}), 0.5)), centres)
        np.testing.assert_allclose(det.score(test), want, rtol=1e-6, err_msg=tags)


# -- the distances against the centres ---------------------------------------------------------------------------
def test_centre_score_kinds_closed_form() -> None:
    f = np.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    c = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    np.testing.assert_allclose(centre_score(f, c, "cosine"), [-0.8, 0.0, -0.5], rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(centre_score(f, c, "euclid"), [np.sqrt(18.0), np.sqrt(5.0), np.sqrt(3.0)], rtol=1e-14)
    # chunks of 1 dim: each chunk's cosine is the sign of the product (0 where either is 0)
    np.testing.assert_allclose(centre_score(f, c, "chunk", tag_prob=np.array([0.5, 1.0, 0.2]), chunks=4),
                               [-0.125, 0.0, -0.05], rtol=1e-15, atol=1e-15)


def test_centre_score_kinds_match_the_formulas() -> None:
    rng = np.random.default_rng(5)
    f, c = rng.normal(0, 1, (7, 8)), rng.normal(0, 1, (3, 8))
    p = rng.random(7)

    def sm(v: np.ndarray) -> np.ndarray:
        e = np.exp(v - v.max())
        return e / e.sum()

    kl = np.array([min(float((sm(cc) * (np.log(sm(cc)) - np.log(sm(v)))).sum()) for cc in c) for v in f])
    np.testing.assert_allclose(centre_score(f, c, "kl"), kl, rtol=1e-12)
    eu = np.array([min(np.linalg.norm(v - cc) for cc in c) for v in f])
    np.testing.assert_allclose(centre_score(f, c, "euclid"), eu, rtol=1e-12)
    np.testing.assert_allclose(centre_score(f, c, "cosine"), cos_score(f, c), rtol=1e-12)
    chunk = np.array([-max(np.mean([cos_score(v[None, 2 * k : 2 * k + 2], cc[None, 2 * k : 2 * k + 2])[0] * -1
                                    for k in range(4)]) for cc in c) * pv for v, pv in zip(f, p, strict=True)])
    np.testing.assert_allclose(centre_score(f, c, "chunk", tag_prob=p), chunk, rtol=1e-12)


@pytest.mark.parametrize("kind", ["euclid", "kl", "chunk"])
def test_cs_with_other_distances(kind) -> None:
    train = make_split(5)[0]
    test, toks, ids, maps, probs = make_test()
    det = tagood.create("cs", score=kind, no_tag="fallback", **FIXED).fit(train)
    keep = kept_slots(ids, probs, {10, 11, 12})
    f = mean_feats(toks, object_mask(maps, keep, 0.5))
    c = cs_centres(5)
    if kind == "euclid":
        want = np.array([min(np.linalg.norm(v - cc) for cc in c) for v in f])
    elif kind == "kl":
        def logsm(v: np.ndarray) -> np.ndarray:
            return v - v.max() - np.log(np.exp(v - v.max()).sum())
        want = np.array([min(float((np.exp(logsm(cc)) * (logsm(cc) - logsm(v))).sum()) for cc in c) for v in f])
    else:
        # the tag factor: max kept IND-tag probability; untagged images (fallback): max IND-vocabulary probability
        pt = np.array([max(probs[i, ids[i, j]] for j in np.flatnonzero(keep[i])) if keep[i].any()
                       else probs[i, [10, 11, 12]].max() for i in range(len(f))])
        want = np.array([-max(np.mean([(v[2 * k : 2 * k + 2] @ cc[2 * k : 2 * k + 2])
                                       / np.linalg.norm(v[2 * k : 2 * k + 2]) / np.linalg.norm(cc[2 * k : 2 * k + 2])
                                       for k in range(4)]) for cc in c) * pv for v, pv in zip(f, pt, strict=True)])
    np.testing.assert_allclose(det.score(test), want, rtol=1e-6)


# -- TagOOD and (CE)+CS: the learned projector, then the paper's centres and score -----------------------------
SMALL = {"dim": 8, "depth": 1, "heads": 2, "mlp": 16, "epochs": 2, "batch_size": 8}


def object_tokens(toks: np.ndarray, mask: np.ndarray) -> TokenSet:
    """The kept tokens of each image, with their positions, as the projector reads them."""
    values = np.concatenate([toks[i][mask[i]] for i in range(len(toks))]).astype(np.float32)
    positions = np.concatenate([np.flatnonzero(mask[i]) for i in range(len(toks))]).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int64)
    return TokenSet(values, offsets, positions)


def test_cecs_centres_are_class_means_of_the_projected_object_features() -> None:
    train, toks, ids, maps, probs = make_split(6)
    labels = np.asarray(train.labels)
    test, ttoks, tids, tmaps, tprobs = make_test()
    det = tagood.create("ce+cs", no_tag="ood", **FIXED, **SMALL).fit(train, tagood.Context(seed=0))
    assert det.options.mse_weight == 0.0
    g_train, _ = embed(det.model, object_tokens(toks, object_mask(maps, kept_slots(ids, probs, {10, 11, 12}), 0.5)))
    centres = np.stack([g_train[labels == c].astype(np.float64).mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(det.centres, centres, rtol=1e-5, atol=1e-6)
    keep = kept_slots(tids, tprobs, {10, 11, 12})
    g_test, _ = embed(det.model, object_tokens(ttoks, object_mask(tmaps, keep, 0.5)))
    want = cos_score(g_test.astype(np.float64), centres)
    want[~keep.any(axis=1)] = NO_TAG_SCORE
    np.testing.assert_allclose(det.score(test), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "euclid"])
def test_tagood_scores_projected_object_features_against_its_centres(kind) -> None:
    train = make_split(7)[0]
    test, ttoks, tids, tmaps, tprobs = make_test()
    det = tagood.create("tagood", score=kind, no_tag="fallback", **FIXED, **SMALL).fit(train, tagood.Context(seed=1))
    keep = kept_slots(tids, tprobs, {10, 11, 12})
    g, _ = embed(det.model, object_tokens(ttoks, object_mask(tmaps, keep, 0.5)))
    mu = np.asarray(det.centres, np.float64)  # the EMA centres: learned, no closed form
    g = g.astype(np.float64)
    want = cos_score(g, mu) if kind == "cosine" else np.array([min(np.linalg.norm(v - m) for m in mu) for v in g])
    np.testing.assert_allclose(det.score(test), want, rtol=1e-5, atol=1e-6)


def test_ema_update_closed_form() -> None:
    """Eq. 4: mu_c <- m mu_c + (1 - m) mean of the batch's class-c features; classes absent from the batch keep
    their centre."""
    centres = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0]], dtype=torch.float64)
    feats = torch.tensor([[3.0, 1.0], [5.0, 3.0], [-2.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    ema_update(centres, feats, labels, 0.75)
    want = [[0.75 * 1 + 0.25 * 4, 0.25 * 2], [0.25 * -2, 0.75 * 2], [4.0, 4.0]]
    np.testing.assert_allclose(centres.numpy(), want, rtol=1e-15)
