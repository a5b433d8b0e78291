"""The synthetic rehearsal tagger and source (tests and benchmarks only): RAM-shaped outputs that are a function of the
image's identity, with class structure, through the real extraction, cache, streaming and scoring of `tagood bench`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tagood.backbones.factory import build_backbone, tagger_context
from tagood.backbones.synthetic import SyntheticTagger
from tagood.bench.sources import build_source
from tagood.data.synthetic import FOREIGN, SyntheticSource, decode_identity, encode_identity


def _batch(tagger: SyntheticTagger, src: SyntheticSource, idx) -> np.ndarray:
    return np.stack([tagger.preprocess(src.load(int(i))) for i in idx])


def test_identity_round_trip_and_foreign_images():
    img = encode_identity(3, 517, 0xDEADBEEF)
    kind, label, uid = decode_identity(img.transpose(2, 0, 1)[None].astype(np.float32))
    assert (kind[0], label[0], uid[0]) == (3, 517, 0xDEADBEEF)
    shuffled = img.reshape(-1, 3)[::-1].reshape(img.shape)  # e.g. a jigsaw of a synthetic image: marker gone
    k2, _, u2 = decode_identity(np.stack([img, shuffled]).transpose(0, 3, 1, 2).astype(np.float32))
    assert k2.tolist() == [3, FOREIGN] and u2[1] != 0xDEADBEEF
    with pytest.raises(ValueError, match="synthetic batch"):
        decode_identity(np.zeros((1, 3, 8, 8), np.float32))


def test_source_needs_no_files_and_parts_differ():
    train, test = SyntheticSource(30, "train", num_classes=3), SyntheticSource(30, "test", num_classes=3)
    ood = SyntheticSource(5, "ood", ood_set=2)
    assert [s.label for s in train.samples[:4]] == [0, 1, 2, 0] and all(s.label == -1 for s in ood.samples)
    assert train.class_names == ["class0", "class1", "class2"] and ood.class_names is None
    assert np.asarray(train.load(4)).shape == (4, 4, 3)
    assert train.uid(0) != test.uid(0) and train.fingerprint() != test.fingerprint()
    assert len({train.uid(i) for i in range(30)}) == 30
    via_config = build_source({"type": "synthetic", "part": "ood", "images": 5, "ood_set": 2}, name="far")
    assert via_config.name == "far" and np.array_equal(np.asarray(via_config.load(1)), np.asarray(ood.load(1)))


def test_outputs_are_ram_shaped_configurable_and_a_function_of_identity():
    t = build_backbone({"name": "synthetic", "tokens": 50, "width": 24, "tags": 300, "top_k_tags": 7, "blocks": 5})
    assert isinstance(t, SyntheticTagger) and t.id.startswith("synthetic-tagger-")
    src = SyntheticSource(40, "train", num_classes=4)
    out = t.forward(_batch(t, src, range(40)))
    shapes = {k: getattr(out, k).shape for k in out.present()}
    assert shapes == {"features": (40, 24), "tokens": (40, 50, 24), "tag_probs": (40, 300), "tag_ids": (40, 7),
                      "tag_attention": (40, 7, 50), "block_norms": (40, 5)}
    assert set(t.outputs) == set(shapes) and out.tag_ids.dtype == np.int64 and out.tokens.dtype == np.float32
    np.testing.assert_allclose(out.features, out.tokens[:, 1:].mean(1), rtol=1e-5, atol=1e-6)  # RAM's pooled token
    np.testing.assert_allclose(out.tag_attention.sum(-1), 1.0, rtol=1e-5)
    # the same image gives the same outputs in another batch, and from a fresh tagger with the same options
    again = SyntheticTagger(tokens=50, width=24, tags=300, top_k_tags=7, blocks=5).forward(_batch(t, src, [17, 3]))
    np.testing.assert_array_equal(again.tokens, out.tokens[[17, 3]])
    np.testing.assert_array_equal(again.tag_ids, out.tag_ids[[17, 3]])
    np.testing.assert_allclose(t.attend(out.tokens, out.tag_ids), out.tag_attention, rtol=1e-6)
    assert tagger_context(t)["attend"] == t.attend and len(tagger_context(t)["tag_names"]) == 300
    # class structure: same-class images are closer than other-class ones, and the top tag is the class's
    f = out.features / np.linalg.norm(out.features, axis=1, keepdims=True)
    y = np.array([s.label for s in src.samples])
    sim = f @ f.T
    same = sim[(y[:, None] == y[None]) & ~np.eye(40, dtype=bool)].mean()
    assert same > sim[y[:, None] != y[None]].mean() + 0.3
    assert all(len({int(out.tag_ids[i, 0]) for i in np.flatnonzero(y == c)}) == 1 for c in range(4))
    # OOD images: their own clusters, lower block norms
    ood = SyntheticSource(40, "ood", num_classes=4)
    o = t.forward(_batch(t, ood, range(40)))
    assert o.block_norms.mean() < out.block_norms.mean()
    assert not set(o.tag_ids[:, 0].tolist()) & set(out.tag_ids[:, 0].tolist())
    # any other picture is read as a foreign image, not an error
    foreign = t.forward(t.preprocess(Image.new("RGB", (32, 20), (9, 200, 30)))[None])
    assert foreign.tokens.shape == (1, 50, 24)


CONFIG = """
name = "synthetic-rehearsal"
methods = ["msp", "energy", "knn", "mahalanobis", "vim", "tagood[epochs=1]"]
batch_size = 256

[options]
stream_above_gb = 0.001

[backbone]
name = "synthetic"
tokens = 145
width = 64
tags = 200

[train]
type = "synthetic"
part = "train"
images = 2000

[test]
type = "synthetic"
part = "test"
images = 500

[ood.far1]
type = "synthetic"
part = "ood"
images = 500
ood_set = 0

[ood.far2]
type = "synthetic"
part = "ood"
images = 500
ood_set = 1
"""


def test_bench_on_the_synthetic_tagger_separates_ind_from_ood(tmp_path):
    cfg = tmp_path / "bench.toml"
    cfg.write_text(CONFIG)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "tagood", "bench", str(cfg), "--out", str(tmp_path / "out"),
                        "--cache", str(tmp_path / "cache"), "--quiet"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    aurocs = {(x["method"], x["ood"]): x["auroc"] for x in res["rows"]}
    assert {m for m, _ in aurocs} == {"msp", "energy", "knn", "mahalanobis", "vim", "tagood[epochs=1]"}
    assert {o for _, o in aurocs} >= {"far1", "far2"}
    assert all(a > 0.8 for a in aurocs.values()), aurocs
    meta = res["meta"]
    assert meta["backbone"]["id"].startswith("synthetic-tagger-n145-w64-t200")
    assert meta["sizes"] == {"train": 2000, "test": 500, "far1": 500, "far2": 500}
    assert meta["streamed"], "the heavy fields were not streamed from the cache"
    entries = [p for p in (tmp_path / "cache").iterdir() if (p / "manifest.json").exists()]
    assert len(entries) == 4 and not any((p / "manifest.log").exists() for p in entries)  # finished: compacted
