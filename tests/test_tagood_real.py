"""TagOOD's decomposition contract on real EfficientNet-Lite0 features of real photo scenes (the CAM
tagger over the ImageNet classes; photographic tuxpaint stamps on scikit-image / scikit-learn photos)."""

from __future__ import annotations

import numpy as np
import pytest

from tagood import detectors
from tagood.detectors.tagood import NO_TAG_SCORE, VocabularyError, centre_score, mean_tokens, select_tokens
from tagood_data import scene_features


@pytest.fixture(scope="module")
def scenes(backbone, tmp_path_factory):
    return scene_features(backbone, tmp_path_factory)


def test_token_masks_on_real_features_are_what_cs_scores(scenes):
    fs, ctx = scenes
    det = detectors.create("cs[no_tag=fallback]").fit(fs["train"], ctx)
    assert det.vocab_rule_used in ("frequent", "specific") and det.per_class_used >= 1
    for split in ("test", "scene-clutter"):
        data = fs[split]
        mask, has = det.token_masks(data)
        assert mask.shape == (len(data), 49) and has.shape == (len(data),)  # the 7x7 grid, no prefix token
        ids = det.kept_tag_ids(data)
        assert [len(a) > 0 for a in ids] == has.tolist()
        assert all(np.isin(a, det.vocab.tags).all() for a in ids)
        expect = centre_score(mean_tokens(select_tokens(data.tokens, mask)), det.centres, "cosine")
        np.testing.assert_allclose(det.score(data), expect, rtol=1e-9, atol=1e-12)
        assert mask[has].sum(axis=1).max() < 49 and mask[~has].all()  # tau = 0.5 cuts; untagged images use all
    # tau = 0: every token of every image (before: each image's lowest-attention token was dropped)
    all_tokens = detectors.create("cs[tau=0,no_tag=fallback]").fit(fs["train"], ctx)
    assert all_tokens.token_masks(fs["test"])[0].all()
    # the paper's no-tag rule on the same images: the untagged ones get the most-OOD score, the others are unchanged
    ood_rule = detectors.create("cs[no_tag=ood]").fit(fs["train"], ctx)
    s, has = ood_rule.score(fs["test"]), ood_rule.token_masks(fs["test"])[1]
    assert np.all(s[~has] == NO_TAG_SCORE)
    np.testing.assert_array_equal(s[has], det.score(fs["test"])[has])


def test_paper_preset_on_real_features(scenes):
    fs, ctx = scenes
    # the uniform tag threshold 0.5 of the public code: too high for the CAM tagger on these few scenes,
    # and the error says which class and what to do
    with pytest.raises(VocabularyError, match=r"IND class \d \(\w+\): none of its 4 training images kept a tag; lower the tag "
                                              r"threshold"):
        detectors.create("tagood[preset=paper,epochs=2,dim=32,mlp=64,batch_size=16]").fit(fs["train"], ctx)
    det = detectors.create("tagood[preset=paper,tag_threshold=0.05,epochs=2,dim=32,mlp=64,batch_size=16]").fit(fs["train"], ctx)
    assert det.train_cfg.weight_decay == 5e-4 and det.train_cfg.min_lr == 1e-5 and det.train_cfg.mse_weight == 0.4
    assert det.rule.threshold == 0.05 and det.history[-1]["lr"] == pytest.approx(1e-5)
    mask, has = det.token_masks(fs["test"])
    assert mask.all()  # all image tokens at test time
    s = det.score(fs["test"])
    assert s.shape == (len(fs["test"]),) and np.all(np.isfinite(s))
