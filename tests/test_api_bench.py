"""The Python API gives the benchmark's numbers (issue 21, deliverable 2).

A small real image folder (Fashion-MNIST images as PNG files) is run through ``tagood bench`` and, independently
(its own feature cache, its own backbone), through the Python API the README shows: extract the splits, fit the IND
head with :func:`tagood.detectors.head.fit_head`, put its logits on each split with
:func:`tagood.detectors.head.with_head_logits`, then ``tagood.create(m).fit(train, Context(...)).score(split)``.
Every classic detector gives the same per-sample scores both ways (bit-equal; ODIN, through torch autograd, to 1e-6).
The context is what the runner gives:
``head`` (ReAct, ASH, LHAct, ViM), ``pseudo_ood`` (FeatureNorm: jigsaw-shuffled training images, built by
:meth:`tagood.bench.schema.PseudoOOD.source` as the runner builds them) and, for ODIN, which back-propagates through
the network, ``model`` = the backbone's torch module followed by the head (:class:`tagood.detectors.head.Classifier`)
with the splits' preprocessed images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import tagood
from image_folders import fashion_folder, folder_config
from tagood.backbones.factory import build_backbone
from tagood.bench.config import CLASSIC
from tagood.bench.schema import PseudoOOD
from tagood.bench.scores import load_scores
from tagood.cli.main import app
from tagood.core.images import ImageStream
from tagood.detectors.head import Classifier, fit_head, with_head_logits
from tagood.extract.features import extract_features, image_source

CLASSES = {"trouser": 1, "bag": 8, "sandal": 5}
#: every classic detector; KNN with a k the 24 training images allow (its default, 50, is refused before extraction)
METHODS = [m if m != "knn" else "knn[k=3]" for m in CLASSIC]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api-bench")
    fashion_folder(root / "train", CLASSES, 8, "train")
    fashion_folder(root / "test", CLASSES, 3)
    fashion_folder(root / "ood", {"sneaker": 7}, 6)
    return root


def _images(folder: Path, fs: tagood.FeatureSet, backbone) -> ImageStream:
    """The preprocessed images of the split ``fs`` extracted from ``folder``, row for row (ODIN perturbs them)."""
    src = image_source(folder)
    rows = {s.ident: i for i, s in enumerate(src.samples)}
    return ImageStream(np.stack([backbone.preprocess(src.load(rows[p])) for p in fs.paths]))


def test_every_classic_detector_scores_the_same_through_the_api_and_tagood_bench(folders, tagood_home, tmp_path):
    assert {m.split("[")[0] for m in METHODS} == set(CLASSIC) == {
        "msp", "maxlogit", "energy", "odin", "react", "ash", "lhact", "featurenorm", "knn", "mahalanobis", "vim"}
    cfg = folder_config(folders / "bench.toml", METHODS, "sneakers", name="api")
    cfg.write_text(cfg.read_text() + "[pseudo_ood]\nn = 12\n")  # FeatureNorm's jigsaw images: 12 of the 24
    r = CliRunner().invoke(app, ["bench", str(cfg), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "bench-cache")],
                           terminal_width=200)
    assert r.exit_code == 0, r.output
    bench, ids = load_scores(tmp_path / "run")
    assert set(bench) == set(METHODS), sorted(bench)

    # the Python API, from scratch: its own backbone and feature cache
    backbone = build_backbone({"name": "efficientnet-lite0"})
    cache = tmp_path / "api-cache"
    fields = ["features", "block_norms"]
    train, test, ood = (extract_features(folders / d, backbone, cache=cache, fields=fields, progress=False)
                        for d in ("train", "test", "ood"))
    pseudo = extract_features(PseudoOOD(n=12).source(image_source(folders / "train"), seed=0), backbone, cache=cache,
                              fields=["block_norms"], progress=False)
    assert list(test.paths) == ids["test"] and list(ood.paths) == ids["sneakers"]
    head = fit_head(train, image_source(folders / "train").class_names)
    train, test, ood = (with_head_logits(fs, head) for fs in (train, test, ood))
    assert test.logits.shape == (len(test), len(CLASSES))  # the IND head's logits, not the backbone's 1000
    test.images, ood.images = _images(folders / "test", test, backbone), _images(folders / "ood", ood, backbone)
    ctx = tagood.Context(head=head, class_names=head.class_names, pseudo_ood=pseudo, model=Classifier(backbone, head))

    for m in METHODS:
        det = tagood.create(m).fit(train, ctx)
        for split, fs in (("test", test), ("sneakers", ood)):
            got, want = det.score(fs), bench[m][split]
            assert got.shape == want.shape, (m, split)
            if m == "odin":  # torch autograd through the network: equal to 1e-6 (bit-equal on one machine so far)
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"{m} on {split}")
            else:  # the same numpy arithmetic on the same features: bit-equal
                np.testing.assert_array_equal(got, want, err_msg=f"{m} on {split}")


def test_knn_with_k_above_the_training_count_fails_before_extraction(folders, tmp_path):
    cfg = folder_config(tmp_path / "bench.toml", ["msp", "knn"], "sneakers", name="too-few")
    for d in ("train", "test", "ood"):
        (tmp_path / d).symlink_to(folders / d)
    r = CliRunner().invoke(app, ["bench", str(cfg), "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "c")],
                           terminal_width=200)
    assert r.exit_code == 2, r.output
    assert "knn" in r.output and "24" in r.output and "Traceback" not in r.output, r.output  # 24 training images
    assert not (tmp_path / "c").exists()  # nothing was extracted
