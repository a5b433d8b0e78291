"""The TagOOD family's options, declared once on the detectors (``Options``; the training options are
``TrainOptions``, which ``TrainConfig`` extends), the preset rule, ``check_data`` and the vocabulary memo held by
the ``Context``."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pydantic import ValidationError

from tagood import detectors
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.detectors.options import OptionError, describe
from tagood.detectors.tagood import PRESETS, TagOOD, TrainConfig, TrainOptions, Vocabulary
from tagood_data import toy_tagged


def _toy(n_per: int = 20, seed: int = 0) -> FeatureSet:
    return toy_tagged(n_per, seed)


def test_each_detector_lists_the_options_it_uses_with_defaults_and_descriptions():
    tag = {"tau", "tag_threshold", "tag_top_k", "per_class", "coverage", "vocabulary", "no_tag", "vocab", "decompose", "tag_maps"}
    centre = {"score", "test_tokens", "tags", "preset"}
    train = set(TrainOptions.model_fields)
    got = {name: {o.name: o for o in describe(name)} for name in ("tagscore", "cs", "ce+cs", "tagood")}
    assert set(got["tagscore"]) == tag and set(got["cs"]) == tag | centre  # neither trains a projector
    assert set(got["tagood"]) == set(got["ce+cs"]) == tag | centre | train and "seed" not in got["tagood"]  # Context.seed
    for opts in got.values():
        assert all(o.description and "\n" not in o.description for o in opts.values())
    t = got["tagood"]
    assert (t["tau"].default, t["tau"].constraint, t["no_tag"].default, t["per_class"].default) == (0.5, "< 1", "auto", "auto")
    # the training defaults are the small preset, the detectors' default; (CE)+CS is the projector without the MSE
    assert {k: t[k].default for k in train} == PRESETS["small"].model_dump(exclude={"seed"})
    assert got["ce+cs"]["mse_weight"].default == 0.0 and t["mse_weight"].default == 0.1
    assert t["dropout"].constraint == "in [0, 1)" and t["heads"].constraint == ">= 1"


def test_train_config_is_the_training_options_plus_the_seed():
    assert issubclass(TrainConfig, TrainOptions) and issubclass(TagOOD.Options, TrainOptions)
    assert set(TrainConfig.model_fields) == set(TrainOptions.model_fields) | {"seed"}
    assert PRESETS["small"] == TrainConfig()
    cfg = PRESETS["paper"].with_(epochs=3, lr=None)  # None: keep the preset's
    assert (cfg.epochs, cfg.lr, cfg.dim) == (3, 0.01, 512)
    with pytest.raises(ValidationError, match="multiple of heads"):
        PRESETS["small"].with_(dim=100)
    with pytest.raises(ValidationError):
        PRESETS["small"].with_(epoch=3)


def test_the_preset_fills_what_is_not_given():
    paper = detectors.create("tagood[preset=paper]")
    assert (paper.options.dim, paper.options.mse_weight, paper.test_tokens, paper.tag_threshold) == (512, 0.4, "all", 0.5)
    assert paper.train_cfg == PRESETS["paper"]
    over = detectors.create("tagood[preset=paper,dim=64,heads=4,test_tokens=object]", tag_threshold=None)
    assert (over.options.dim, over.options.mlp, over.test_tokens, over.tag_threshold) == (64, 2048, "object", 0.5)
    assert detectors.create("ce+cs[preset=paper]").train_cfg == PRESETS["paper"].with_(mse_weight=0.0)
    assert detectors.create("ce+cs[mse_weight=0.2]").train_cfg.mse_weight == 0.2
    small = detectors.create("cs")
    assert (small.test_tokens, small.tag_threshold) == ("object", None)


@pytest.mark.parametrize("spec, message", [
    ("tagood[seed=3]", r"no option seed"),  # the seed is Context.seed
    ("cs[epochs=3]", r"no option epochs"),  # CS trains nothing
    ("tagood[dim=100]", r"dim must be a multiple of heads"),
    ("tagood[score=chunk,dim=30,heads=3]", r"dim must be a multiple of 4"),
    ("tagood[dropout=1]", r"option dropout .* less than 1"),
    ("tagood[momentum=1.5]", r"option momentum"),
    ("tagscore[tau=1]", r"option tau"),
    ("cs[per_class=0]", r"option per_class"),
    ("cs[no_tag=maybe]", r"option no_tag"),
    ("tagood[preset=huge]", r"option preset"),
])
def test_bad_options_fail_at_creation(spec, message):
    with pytest.raises(OptionError, match=message):
        detectors.create(spec)


def test_check_data_refuses_a_vocabulary_file_that_cannot_work(tmp_path):
    missing = tmp_path / "none.tsv"
    with pytest.raises(OptionError, match=r"option vocabulary: vocabulary file .*none.tsv not found"):
        detectors.create("tagscore", vocabulary=str(missing)).check_data(60, 3)
    two = Vocabulary([[10], [11]], [[20], [20]], ["a", "b"]).save(tmp_path / "two.tsv")
    det = detectors.create("cs", vocabulary=str(two))
    with pytest.raises(OptionError, match=r"gives no tag to IND classes \[2\] of the 3"):
        det.check_data(60, 3)
    with pytest.raises(OptionError, match=r"IND classes \[2\]"):
        det.fit(_toy(), Context())  # fit checks the data first
    det.check_data(40, 2)  # a file for these classes works
    three = Vocabulary([[10], [11], [12]], [[20], [20], [20]]).save(tmp_path / "three.tsv")
    fitted = detectors.create("cs", vocabulary=three).fit(_toy(), Context())
    assert fitted.vocab.class_tags == [[10], [11], [12]] and fitted.vocab_rule_used == "file"


def test_the_vocabulary_is_shared_through_the_context(caplog):
    train = _toy()
    chosen = lambda: [r for r in caplog.records if r.getMessage().startswith("IND vocabulary: rule")]  # noqa: E731
    shared = Context()
    with caplog.at_level(logging.INFO):
        a = detectors.create("tagscore").fit(train, shared)
        b = detectors.create("cs[tau=0.25]").fit(train, shared)
    assert len(chosen()) == 1 and a.vocab.class_tags == b.vocab.class_tags
    assert b.vocab is not a.vocab  # each detector holds its own copy
    caplog.clear()
    with caplog.at_level(logging.INFO):
        c = detectors.create("cs[tau=0.25]").fit(train, Context())  # another context builds it again
        d = detectors.create("cs[tau=0.25]").fit(train.subset(np.arange(len(train))), shared)  # another split too
    assert len(chosen()) == 2
    assert c.vocab.class_tags == d.vocab.class_tags == b.vocab.class_tags
    assert (c.no_tag, c.heldout_no_tag_fraction) == (b.no_tag, b.heldout_no_tag_fraction)
    np.testing.assert_array_equal(c.score(_toy(n_per=5, seed=1)), b.score(_toy(n_per=5, seed=1)))
