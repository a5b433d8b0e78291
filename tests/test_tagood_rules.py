"""TagOOD rules: token_masks / kept_tag_ids contract, tau = 0, tag threshold None, no-tag rule,
specific vocabulary, presets, centres and the training fallback (issues 10 and 11)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagood import detectors
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.types import TagAttention, TokenSet
from tagood.detectors.tagood import NO_TAG_SCORE, centre_score, choose_no_tag, select_tokens, token_mask

SMALL = "epochs=2,dim=16,mlp=32,batch_size=32"


def _toy(n_per: int = 30, seed: int = 0, ood: bool = False, n_cls: int = 3) -> FeatureSet:
    """Class k's object (3 of 9 tokens) carries a block of 4 dims; tag 10+k names it (prob 0.8) and
    attends to the object; tag 19 is a second, unattended tag."""
    rng = np.random.default_rng(seed)
    ntok, d = 9, 16
    labels = np.repeat(np.arange(n_cls), n_per)
    toks = rng.normal(0, 1.0, (len(labels), ntok, d)).astype(np.float32)
    maps = rng.random((len(labels), 2, ntok)).astype(np.float32)
    ids = np.zeros((len(labels), 2), np.int64)
    probs = np.full((len(labels), 20), 0.01)
    for i, k in enumerate(labels):
        obj = rng.choice(ntok, 3, replace=False)
        toks[i, obj, 4 * (3 if ood else k): 4 * (3 if ood else k) + 4] += 4.0
        maps[i, 0, obj] += 5.0
        ids[i] = [10 + k, 19]
        probs[i, 10 + k] = 0.8
    return FeatureSet(labels=labels, tokens=TokenSet.from_dense(toks), tag_probs=probs, tag_attention=TagAttention(ids, maps))


def _streamed(fs: FeatureSet, size: int) -> FeatureSet:
    """The same split served in chunks of ``size`` samples (tokens and attention streamed)."""
    n = len(fs)

    def chunks():
        for a in range(0, n, size):
            idx = np.arange(a, min(a + size, n))
            yield a, FeatureSet(tokens=fs.tokens.select(idx),
                                tag_attention=TagAttention(fs.tag_attention.ids[idx], fs.tag_attention.maps[idx]))

    return FeatureSet(labels=fs.labels, tag_probs=fs.tag_probs, chunks=chunks, streamed=frozenset({"tokens", "tag_attention"}))


@pytest.mark.parametrize("spec", ["cs[per_class=1]", "cs[per_class=1,tau=0]", f"tagood[per_class=1,test_tokens=all,{SMALL}]",
                                  "tagscore[per_class=1]"])
def test_token_masks_contract_matches_scoring_and_streams(spec):
    train, test = _toy(seed=0), _toy(n_per=8, seed=1)
    test.tag_probs[:2] = 0.0  # two images keep no tag
    det = detectors.create(spec).fit(train, Context())
    mask, has = det.token_masks(test)
    assert mask.shape == (len(test), 9) and mask.dtype == bool and has.tolist() == [False] * 2 + [True] * (len(test) - 2)
    assert mask[~has].all()  # the all-tokens rows of untagged images
    keep = det.rule.kept(test.tag_attention, test.tag_probs, allowed=det.vocab.tags)
    if det.hparams.get("test_tokens") == "all":
        assert mask.all()
    else:
        np.testing.assert_array_equal(mask, token_mask(test.tag_attention.maps, keep, det.tau)[0])
    ids = det.kept_tag_ids(test)
    assert [a.tolist() for a in ids] == [[] if i < 2 else [10 + int(y)] for i, y in enumerate(test.labels)]
    # chunk by chunk on a streamed split: the same answer
    m2, h2 = det.token_masks(_streamed(test, 5))
    np.testing.assert_array_equal(m2, mask)
    np.testing.assert_array_equal(h2, has)
    assert [a.tolist() for a in det.kept_tag_ids(_streamed(test, 5))] == [a.tolist() for a in ids]
    if spec.startswith("cs"):  # CS scores the mean of exactly these tokens
        from tagood.detectors.tagood import mean_tokens
        feats = mean_tokens(select_tokens(test.tokens, mask))
        expect = centre_score(feats, det.centres, "cosine")
        expect[~has] = NO_TAG_SCORE if det.no_tag == "ood" else expect[~has]
        np.testing.assert_allclose(det.score(test), expect, rtol=1e-9, atol=1e-12)


def test_token_masks_need_fit():
    from tagood.detectors.base import NotFittedError

    with pytest.raises(NotFittedError, match="fit"):
        detectors.create("cs").token_masks(_toy(n_per=2))


# -- tau = 0 and the tag threshold -----------------------------------------------------------------
def test_tau_zero_keeps_every_token_of_every_image():
    train = _toy(seed=0)
    det = detectors.create("cs[per_class=1,tau=0]").fit(train, Context())
    mask, has = det.token_masks(train)
    assert has.all() and mask.all()  # before: each image's minimum-attention token was dropped
    means = np.stack([train.tokens.pad()[0][train.labels == c].mean(axis=(0, 1)) for c in range(3)])
    np.testing.assert_allclose(det.centres, means, rtol=1e-5, atol=1e-6)  # all 9 tokens of every training image


def test_tag_threshold_none_uses_tagger_thresholds_but_zero_is_zero():
    train, test = _toy(seed=0), _toy(n_per=5, seed=1)
    per_tag = np.full(20, 0.5)
    per_tag[11] = 0.9  # the tagger's own threshold rejects class 1's tag (prob 0.8)
    ctx = Context(tag_thresholds=per_tag)
    given = detectors.create("cs[per_class=1,tag_threshold=0.0]").fit(train, ctx)
    assert np.isscalar(given.rule.threshold) and given.rule.threshold == 0.0  # before: 0.0 meant "not given"
    assert given.vocab.class_tags == [[10], [11], [12]] and given.token_masks(test)[1].all()
    with pytest.raises(ValueError, match="none of its"):  # no threshold given: the per-tag file applies, class 1 keeps no tag
        detectors.create("cs[per_class=1]").fit(train, ctx)
    per_tag[11] = 0.5
    default = detectors.create("cs[per_class=1]").fit(train, ctx)
    assert not np.isscalar(default.rule.threshold) and np.asarray(default.rule.threshold)[11] == 0.5
    assert detectors.create("cs[per_class=1]").fit(train, Context()).rule.threshold == 0.0  # no file, no threshold: 0.0


# -- the no-tag rule --------------------------------------------------------------------------------
def test_no_tag_ood_vs_fallback_on_ind_and_ood_alike():
    train = _toy(seed=0)
    ind, ood = _toy(n_per=10, seed=1), _toy(n_per=10, seed=2, ood=True)
    for fs in (ind, ood):
        fs.tag_probs[::2] = 0.0  # every other image keeps no tag, on both sets
    untagged = np.zeros(len(ind), bool)
    untagged[::2] = True
    ood_rule = detectors.create("cs[per_class=1,no_tag=ood]").fit(train, Context())
    fb_rule = detectors.create("cs[per_class=1,no_tag=fallback]").fit(train, Context())
    np.testing.assert_array_equal(ood_rule.centres, fb_rule.centres)  # the rule acts at test time only
    for fs in (ind, ood):
        s_ood, s_fb = ood_rule.score(fs), fb_rule.score(fs)
        assert np.all(s_ood[untagged] == NO_TAG_SCORE) and np.all(s_fb[untagged] < 1.0)  # cosine scores lie in [-1, 1]
        np.testing.assert_array_equal(s_ood[~untagged], s_fb[~untagged])
        all_tokens = centre_score(fs.tokens.pad()[0][untagged].mean(axis=1), fb_rule.centres, "cosine")
        np.testing.assert_allclose(s_fb[untagged], all_tokens, rtol=1e-5, atol=1e-6)  # scored with all of their tokens
    # the fallback still measures something: untagged IND images score below untagged OOD images
    from sklearn.metrics import roc_auc_score
    s_in, s_out = fb_rule.score(ind)[untagged], fb_rule.score(ood)[untagged]
    assert roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out]) > 0.9
    # the chunk score's tag factor of an untagged image is its best IND-vocabulary probability (below the threshold), not 0
    tg = detectors.create(f"tagood[per_class=1,no_tag=fallback,score=chunk,tag_threshold=0.5,{SMALL}]").fit(train, Context())
    weak = ind.tag_probs.copy()
    weak[untagged, 10 + ind.labels[untagged]] = 0.3  # named, but below the 0.5 threshold: no kept tag
    scored = ind.with_(tag_probs=weak)
    assert not tg.token_masks(scored)[1][untagged].any()
    feats, has, p = tg.features(scored)
    np.testing.assert_allclose(p[untagged], 0.3)
    np.testing.assert_allclose(p[~has], 0.3)
    s_chunk = tg.score(scored)
    np.testing.assert_allclose(s_chunk, centre_score(feats, tg.centres, "chunk", tag_prob=p))
    assert np.all(np.abs(s_chunk[untagged]) <= 0.3 + 1e-9) and np.all(s_chunk[untagged] != 0.0)


def test_no_tag_auto_is_chosen_on_held_out_ind_train():
    train = _toy(n_per=100, seed=0)
    clean = detectors.create("cs[per_class=1]").fit(train, Context())
    assert clean.no_tag == "ood" and clean.heldout_no_tag_fraction == 0.0  # the paper's rule when the vocabulary covers IND
    few = detectors.create("cs[per_class=1]").fit(_toy(n_per=10, seed=0), Context())
    assert few.heldout_no_tag_fraction == 0.0 and few.no_tag == "fallback"  # 0 of 30 held-out images: not sure it is < 5%
    # the bound: 0 of 72 held-out images untagged is surely < 5%, 2 of 72 (2.8%) is not
    assert choose_no_tag(0.0, 72) == "ood" and choose_no_tag(2 / 72, 72) == "fallback"
    assert choose_no_tag(0.01, 10_000) == "ood" and choose_no_tag(0.045, 100_000) == "ood"
    poor = _toy(seed=0)
    rng = np.random.default_rng(0)
    poor.tag_probs[rng.random(len(poor)) < 0.25] = 0.0  # a quarter of IND training images keep no tag
    det = detectors.create("cs[per_class=1]").fit(poor, Context())
    assert det.no_tag == "fallback" and det.heldout_no_tag_fraction > 0.1
    assert det.hparams["no_tag"] == "auto"
    forced = detectors.create("cs[per_class=1,no_tag=ood]").fit(poor, Context())
    assert forced.no_tag == "ood"
    assert det.fit(train, Context()).no_tag == "ood"  # a refit chooses again
    with pytest.raises(ValueError, match="no_tag"):
        detectors.create("cs[no_tag=maybe]")


def test_untagged_training_images_fall_back_to_all_tokens():
    train = _toy(seed=0)
    train.tag_probs[[0, 31, 62]] = 0.0  # one image per class keeps no tag
    det = detectors.create(f"tagood[per_class=1,{SMALL}]")
    assert det.tau == 0.5
    det.rule = det._rule_for(Context())
    det.vocab = det._build_vocab(train, Context())
    tokens, has, n_pos = det._decompose_train(train, Context(), None)
    assert n_pos == 9 and has.sum() == len(train) - 3 and not has[[0, 31, 62]].any()
    assert np.all(tokens.lengths[~has] == 9) and np.all(tokens.lengths[has] < 9)
    for i in (0, 31, 62):  # all tokens, in their spatial order, with their values
        sel = tokens.select(np.array([i]))
        assert sel.positions.tolist() == list(range(9))
        np.testing.assert_array_equal(sel.values, train.tokens.select(np.array([i])).values)


# -- vocabulary ---------------------------------------------------------------------------------------
def _background_toy(n_per: int = 40, seed: int = 0) -> FeatureSet:
    """Tag 5 (a background: attends to the non-object tokens) fires on every image with prob 0.9; the class
    tag 10+k fires on 70% of class k's images with prob 0.6. The most frequent tag of every class is 5."""
    fs = _toy(n_per=n_per, seed=seed)
    rng = np.random.default_rng(seed + 100)
    ids = fs.tag_attention.ids.copy()
    maps = fs.tag_attention.maps.copy()
    ids[:, 1] = 5
    maps[:, 1] = 5.0 - maps[:, 0]  # the background tag attends where the object is not
    fs.tag_probs[:, 5] = 0.9
    for i, y in enumerate(fs.labels):
        fs.tag_probs[i, 10 + y] = 0.6 if rng.random() < 0.7 else 0.0
    return fs.with_(tag_attention=TagAttention(ids, maps))


def test_specific_vocabulary_drops_the_tag_every_class_shares():
    from tagood.detectors.tagood import build_vocabulary
    from tagood.detectors.tagood.vocabulary import vocabulary_fit
    kept = [np.array([5, 10 + k]) if j % 10 < 7 else np.array([5]) for k in range(3) for j in range(10)]
    labels = np.repeat(np.arange(3), 10)
    freq = build_vocabulary(kept, labels, 3, rule="frequent", quiet=True)
    spec = build_vocabulary(kept, labels, 3, rule="specific", quiet=True)
    assert freq.class_tags == [[5], [5], [5]]  # the paper's rule: the shared background tag for every class
    assert spec.class_tags == [[10], [11], [12]] and spec.freq == [[7], [7], [7]]
    # per_class=2 under the specific rule still never adds the shared tag (specificity 0)
    assert build_vocabulary(kept, labels, 3, per_class=2, rule="specific", quiet=True).class_tags == [[10], [11], [12]]
    f, s = vocabulary_fit(freq, kept, labels), vocabulary_fit(spec, kept, labels)
    assert f["coverage"] == 1.0 and f["precision"] == pytest.approx(1 / 3)  # covers everything, separates nothing
    assert s["coverage"] == pytest.approx(0.7) and s["precision"] == 1.0 and s["separation"] > f["separation"]
    # a tag shared by two of three classes is less specific than each class's own tag, more than the universal one
    kept2 = [np.array([7, 10 + k]) if k < 2 else np.array([12]) for k in range(3) for _ in range(4)]
    v2 = build_vocabulary(kept2, np.repeat(np.arange(3), 4), 3, per_class=2, rule="specific", quiet=True)
    assert v2.class_tags == [[10, 7], [11, 7], [12]]


def test_vocab_auto_picks_specific_on_held_out_and_frequent_stays_available(tmp_path):
    train, test = _background_toy(seed=0), _background_toy(n_per=10, seed=1)
    auto = detectors.create("cs[per_class=auto]").fit(train, Context())
    assert auto.vocab_rule_used == "specific" and auto.vocab.class_tags == [[10], [11], [12]]
    back = type(auto).load(auto.save(tmp_path / "det"))
    assert (back.vocab_rule_used, back.per_class_used, back.no_tag) == ("specific", 1, auto.no_tag)
    np.testing.assert_array_equal(back.score(test), auto.score(test))
    frequent = detectors.create("cs[vocab=frequent,per_class=1]").fit(train, Context())
    assert frequent.vocab_rule_used == "frequent" and frequent.vocab.class_tags == [[5], [5], [5]]
    # with the specific vocabulary the kept tokens land on the object (the class tag's attention)
    obj = test.tag_attention.maps[:, 0] > 5.0
    m_spec, h_spec = auto.token_masks(test)
    m_freq, _ = frequent.token_masks(test)

    def prec(m, h):
        return (m & obj)[h].sum() / m[h].sum()

    assert prec(m_spec, h_spec) > 0.9 and prec(m_freq, np.ones(len(test), bool)) < 0.1
    with pytest.raises(ValueError, match="vocab"):
        detectors.create("cs[vocab=rare]")


def test_per_class_auto_grows_until_held_out_coverage():
    fs = _toy(n_per=40, seed=0)
    ids = fs.tag_attention.ids.copy()
    # class k is named by tag 10+k on half of its images and by tag 15+k on the other half
    for i, y in enumerate(fs.labels):
        if i % 2:
            ids[i, 0] = 15 + y
            fs.tag_probs[i, 15 + y], fs.tag_probs[i, 10 + y] = 0.8, 0.01
    fs = fs.with_(tag_attention=TagAttention(ids, fs.tag_attention.maps))
    det = detectors.create("cs[vocab=frequent,tag_threshold=0.1]").fit(fs, Context())  # 0.1: not the 0.01 of tag 19
    assert det.per_class_used == 2 and sorted(map(sorted, det.vocab.class_tags)) == [[10, 15], [11, 16], [12, 17]]
    assert det.heldout_no_tag_fraction == 0.0
    one = detectors.create("cs[vocab=frequent,per_class=1,tag_threshold=0.1]").fit(fs, Context())
    assert one.per_class_used == 1 and one.heldout_no_tag_fraction == pytest.approx(0.5, abs=0.15) and one.no_tag == "fallback"


# -- presets, training and centres --------------------------------------------------------------------
def test_paper_preset_is_the_published_setting():
    det = detectors.create("tagood[preset=paper]")
    cfg = det.train_cfg
    got = (cfg.dim, cfg.depth, cfg.heads, cfg.mlp, cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum)
    assert got == (512, 2, 8, 2048, 100, 256, 0.01, 0.999)
    assert cfg.weight_decay == 5e-4 and cfg.min_lr == 1e-5 and cfg.ce_weight == 1.0
    assert cfg.mse_weight == 0.4  # the paper's 0.1 on the public code's MSE summed over 4 chunks = 0.4 of a mean MSE
    assert det.test_tokens == "all" and det.tau == 0.5 and det.score_kind == "cosine"
    assert det._rule_for(Context(tag_thresholds=np.full(20, 0.8))).threshold == 0.5  # uniform 0.5 beats a per-tag file
    # explicit options still override the preset
    over = detectors.create("tagood[preset=paper,test_tokens=object,tag_threshold=0.2,mse_weight=0.1]")
    assert over.test_tokens == "object" and over.rule.threshold == 0.2 and over.train_cfg.mse_weight == 0.1
    small = detectors.create("tagood")
    assert small.test_tokens == "object" and small.tag_threshold is None and small.train_cfg.weight_decay == 0.05


def test_cosine_schedule_ends_at_min_lr():
    from tagood.detectors.tagood.train import PRESETS, train_projector
    train = _toy(n_per=10)
    cfg = PRESETS["small"].with_(epochs=3, batch_size=8, dim=16, mlp=32, lr=1e-2, min_lr=1e-5)
    _, _, hist = train_projector(train.tokens, train.labels, 3, 9, cfg, progress=False)
    assert hist[-1]["lr"] == pytest.approx(1e-5) and hist[0]["lr"] > 1e-3


def test_tags_gt_uses_the_class_tag_and_recomputes_attention():
    train = _toy(seed=0)
    det = detectors.create(f"tagood[tags=gt,per_class=1,{SMALL}]")
    det.rule, det.vocab = det._rule_for(Context()), det._build_vocab(train, Context())
    source, keep = det._train_keep(train, None)
    assert keep.tolist() == [[True, False]] * len(train)  # the ground-truth tag's slot only, not tag 19
    calls = []

    def attend(tokens, tag_ids):  # the tagger recomputes the GT tag's attention from the tokens
        calls.append(tag_ids.copy())
        return np.tile(np.arange(9, dtype=np.float32), (len(tag_ids), 1, 1))

    source, keep = det._train_keep(train, attend)
    assert calls[0][:, 0].tolist() == (10 + train.labels).tolist() and keep.all()
    tokens, has, _ = det._decompose_train(train, Context(attend=attend), None)
    assert has.all() and np.all(tokens.lengths == 4)  # minmax(0..8) > 0.5 keeps tokens 5..8
    assert tokens.select(np.array([0])).positions.tolist() == [5, 6, 7, 8]
    # a GT tag missing from the stored tags, no tagger to recompute it: the predicted IND tags are used
    ids = np.where(np.arange(len(train))[:, None] == 0, [[19, 3]], train.tag_attention.ids)
    miss = train.with_(tag_attention=TagAttention(ids, train.tag_attention.maps))
    miss.tag_probs[0, 3] = 0.0
    _, keep = det._train_keep(miss, None)
    assert keep[0].tolist() == [False, False] and keep[1:, 0].all()
    det.fit(train, Context())  # end to end


def test_ce_cs_centres_are_class_means_of_projected_training_features():
    from tagood.detectors.tagood import embed
    train = _toy(seed=0)
    det = detectors.create(f"ce+cs[per_class=1,{SMALL}]").fit(train, Context())
    assert det.train_cfg.mse_weight == 0.0
    tokens, _, _ = det._decompose_train(train, Context(), None)
    feats, _ = embed(det.model, tokens)
    means = np.stack([feats[train.labels == c].mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(det.centres, means, rtol=1e-5, atol=1e-5)


def test_mse_term_pulls_features_to_the_ema_centres():
    from tagood.detectors.tagood.train import PRESETS, embed, train_projector
    train = _toy(n_per=30, seed=0)
    gaps = {}
    for w in (0.0, 1.0):
        cfg = PRESETS["small"].with_(epochs=6, batch_size=16, dim=16, mlp=32, mse_weight=w, momentum=0.9, dropout=0.0)
        model, centres, _ = train_projector(train.tokens, train.labels, 3, 9, cfg, progress=False)
        f, _ = embed(model, train.tokens)
        c = centres.numpy()[train.labels]
        gaps[w] = float(np.mean(np.sum((f - c) ** 2, axis=1)) / np.mean(np.sum(f**2, axis=1)))
    assert gaps[1.0] < 0.7 * gaps[0.0], gaps  # with the MSE term the features sit much closer to their class centre


# -- property tests of the vocabulary rules -------------------------------------------------------------


@st.composite
def _kept_lists(draw):
    n_cls = draw(st.integers(1, 4))
    labels = draw(st.lists(st.integers(0, n_cls - 1), min_size=n_cls, max_size=30))
    labels = list(range(n_cls)) + labels  # every class has an image
    kept = [np.array(draw(st.lists(st.integers(0, 7), min_size=1, max_size=4)), dtype=np.int64) for _ in labels]
    return kept, np.array(labels), n_cls


@settings(max_examples=60, deadline=None)
@given(_kept_lists())
def test_vocabulary_rules_match_a_naive_count(case):
    from tagood.detectors.tagood.vocabulary import rank_tags, vocabulary_fit
    kept, labels, n_cls = case
    # naive P(t|c): fraction of class c's images holding tag t (an image counts a tag once)
    p = np.zeros((n_cls, 8))
    for k, y in zip(kept, labels, strict=True):
        p[y, np.unique(k)] += 1
    counts = p.copy()
    p /= np.bincount(labels, minlength=n_cls)[:, None]
    for c, (tags, n) in enumerate(rank_tags(kept, labels, n_cls, "frequent")):
        assert sorted(tags.tolist()) == np.flatnonzero(counts[c]).tolist() and n.tolist() == counts[c, tags].tolist()
        assert np.all(np.diff(n) <= 0)  # most frequent first
    for c, (tags, _) in enumerate(rank_tags(kept, labels, n_cls, "specific")):
        spec = p[c] - (p.sum(axis=0) - p[c]) / max(n_cls - 1, 1) if n_cls > 1 else p[c]
        s = spec[tags]
        assert len(tags) >= 1 and np.all(np.diff(s) <= 1e-12)  # most specific first
        positive = np.flatnonzero((counts[c] > 0) & (spec > 1e-9))
        if len(positive):  # exactly the tags more frequent here than in the other classes on average
            assert sorted(tags.tolist()) == positive.tolist()
    from tagood.detectors.tagood import Vocabulary
    v = Vocabulary([tags[:2].tolist() for tags, _ in rank_tags(kept, labels, n_cls, "specific")])
    fit = vocabulary_fit(v, kept, labels)
    assert 0.0 <= fit["separation"] <= fit["coverage"] <= 1.0 and fit["n"] == len(labels)
    covered = [np.isin(k, v.tags).any() for k in kept]
    assert fit["coverage"] == pytest.approx(np.mean(covered))
