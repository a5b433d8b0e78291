"""TagOOD rules: token_masks / kept_tag_ids contract, tau = 0, tag threshold None, no-tag rule,
specific vocabulary, presets, centres and the training fallback (issues 10 and 11)."""

from __future__ import annotations

import numpy as np
import pytest

from tagood import detectors
from tagood.tagood import NO_TAG_SCORE, select_tokens, token_mask
from tagood.types import Context, FeatureSet, TagAttention, TokenSet

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


@pytest.mark.parametrize("spec", ["cs[per_class=1]", "cs[per_class=1,tau=0]", f"tagood[per_class=1,test_tokens=all,{SMALL}]", "tagscore[per_class=1]"])
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
        from tagood.tagood import centre_score, mean_tokens
        feats = mean_tokens(select_tokens(test.tokens, mask))
        expect = centre_score(feats, det.centres, "cosine")
        expect[~has] = NO_TAG_SCORE if det.no_tag == "ood" else expect[~has]
        np.testing.assert_allclose(det.score(test), expect, rtol=1e-9, atol=1e-12)


def test_token_masks_need_fit():
    with pytest.raises(RuntimeError, match="fit"):
        detectors.create("cs").token_masks(_toy(n_per=2))
