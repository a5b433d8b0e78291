"""Saving and loading the TagOOD family through the common format (``det.save`` / ``tagood.detectors.load``):
each of tagscore, cs, ce+cs and tagood, fitted on real EfficientNet-Lite0 features of real photo scenes (the CAM
tagger), scores bit-identically after a round trip, with nothing of the tagger given again."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tagood import detectors
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.detectors.base import NotFittedError
from tagood.detectors.tagood import TagDetector
from tagood.errors import CheckpointError
from tagood_data import scene_features, toy_tagged

SMALL = "epochs=2,dim=32,mlp=64,batch_size=16"


@pytest.fixture(scope="module")
def scenes(backbone, tmp_path_factory):
    return scene_features(backbone, tmp_path_factory)


@pytest.mark.parametrize("spec", ["tagscore", "cs[no_tag=ood]", f"ce+cs[{SMALL}]", f"tagood[{SMALL}]",
                                  f"tagood[{SMALL},tags=gt,score=chunk,no_tag=fallback]"])
def test_round_trip_is_bit_identical_on_real_features(scenes, spec, tmp_path):
    fs, ctx = scenes
    det = detectors.create(spec).fit(fs["train"], ctx)
    d = det.save(tmp_path / "det")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "manifest.json", "weights.safetensors"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["detector"] == det.name and cfg["spec"] == spec
    back = detectors.load(d)  # nothing of the tagger: the rule, the vocabulary and the centres are the state
    assert type(back) is type(det) and back.options == det.options
    assert back.vocab.class_tags == det.vocab.class_tags and back.vocab.class_names == det.vocab.class_names
    assert (back.no_tag, back.vocab_rule_used, back.per_class_used, back.heldout_no_tag_fraction) == \
           (det.no_tag, det.vocab_rule_used, det.per_class_used, det.heldout_no_tag_fraction)
    assert [back.vocab._tag(t) for t in back.vocab.tags] == [det.vocab._tag(t) for t in det.vocab.tags]
    for split in ("test", "scene-clutter"):
        np.testing.assert_array_equal(back.score(fs[split]), det.score(fs[split]))  # bit for bit
        for a, b in zip(back.token_masks(fs[split]), det.token_masks(fs[split]), strict=True):
            np.testing.assert_array_equal(a, b)
    if getattr(det, "centres", None) is not None:
        assert back.centres.dtype == det.centres.dtype
        np.testing.assert_array_equal(back.centres, det.centres)
    if getattr(det, "model", None) is not None:
        assert back.history == det.history
        for (k, v), (k2, v2) in zip(back.model.state_dict().items(), det.model.state_dict().items(), strict=True):
            assert k == k2 and v.dtype == v2.dtype and bool((v == v2).all())
    # the family's former entry point reads the same files
    old = TagDetector.load(d, device="cpu")
    np.testing.assert_array_equal(old.score(fs["test"]), det.score(fs["test"]))


def _toy(n_per: int = 20, seed: int = 0) -> FeatureSet:
    return toy_tagged(n_per, seed, tag_prob=lambda k: 0.3 + 0.1 * k)


def test_per_tag_thresholds_are_state(tmp_path):
    """The tagger's per-tag thresholds (``Context.tag_thresholds``, RAM's file) are saved with the rule: a loaded
    detector keeps exactly the tags it kept before, without the context."""
    thresholds = np.full(20, 0.05, dtype=np.float32)
    thresholds[10] = 0.25  # class 0's tag: its training images (prob 0.3) keep it, three test images (0.2) do not
    train, test = _toy(), _toy(n_per=6, seed=1)
    test.tag_probs[:3, 10] = 0.2
    det = detectors.create("cs[per_class=1,no_tag=ood]").fit(train, Context(tag_thresholds=thresholds))
    has = det.token_masks(test)[1]
    assert has.tolist() == [False] * 3 + [True] * (len(test) - 3)  # a uniform threshold would tag them all
    back = detectors.load(det.save(tmp_path / "cs"))  # no context: the thresholds come from the saved rule
    assert back.rule.threshold.dtype == np.float32
    np.testing.assert_array_equal(back.rule.threshold, thresholds)
    np.testing.assert_array_equal(back.token_masks(test)[1], has)
    np.testing.assert_array_equal(back.score(test), det.score(test))


def test_loaded_tagood_goes_to_the_context_device(tmp_path):
    det = detectors.create(f"tagood[per_class=1,{SMALL}]").fit(_toy(), Context())
    back = detectors.load(det.save(tmp_path / "t"), Context(device="cpu"))
    assert back.device == "cpu" and next(back.model.parameters()).device.type == "cpu" and not back.model.training
    np.testing.assert_array_equal(back.score(_toy(n_per=4, seed=2)), det.score(_toy(n_per=4, seed=2)))


def test_saving_needs_a_fit_and_the_old_loader_refuses_other_detectors(tmp_path):
    with pytest.raises(NotFittedError, match="fit"):
        detectors.create("tagood").save(tmp_path / "unfitted")
    other = detectors.create("energy").save(tmp_path / "energy")  # training-free: saved without a fit
    with pytest.raises(CheckpointError, match="not a tag-based one"):
        TagDetector.load(other)
