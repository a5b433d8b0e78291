"""The real EfficientNet-Lite0 backbone / CAM tagger and the IND linear head."""

from __future__ import annotations

import numpy as np
import pytest

from tagood import data
from tagood.assets import imagenet_classes, imagenet_synonyms, imagenet_wnids
from tagood.head import fit_linear_head, head_accuracy


def test_assets():
    names, wnids = imagenet_classes(), imagenet_wnids()
    assert len(names) == 1000 and len(set(wnids)) == 1000 and wnids[0] == "n01440764"
    assert names[0] == "tench" and len(imagenet_synonyms()) == 1000


def test_preprocess(backbone, photos):
    x = backbone.preprocess(photos["china.jpg"])
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert -1.0 <= x.min() and x.max() <= 1.0 + 1e-6  # (x - 127) / 128 of 0..255


def test_real_photos_are_recognised(backbone, photos):
    x = np.stack([backbone.preprocess(photos[n]) for n in ("china.jpg", "flower.jpg")])
    out = backbone.forward(x)
    top5 = [[backbone.tag_names[j] for j in out.tag_ids[i][:5]] for i in range(2)]
    assert {"palace", "monastery", "castle", "bell-cot", "stupa", "pagoda"} & set(top5[0]), top5[0]
    assert {"daisy", "bee", "pot", "vase", "rapeseed", "yellow lady's slipper"} & set(top5[1]), top5[1]


def test_outputs_consistent(backbone, photos):
    x = np.stack([backbone.preprocess(photos["flower.jpg"])] * 3)
    out = backbone.forward(x)
    assert out.tokens.shape == (3, 49, 1280) and out.block_norms.shape == (3, 17)
    np.testing.assert_allclose(out.tokens.mean(axis=1), out.features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.tag_probs.sum(1), 1.0, rtol=1e-5)
    assert np.all(np.diff(np.take_along_axis(out.tag_probs, out.tag_ids, 1), axis=1) <= 0)  # top-k sorted
    np.testing.assert_allclose(backbone.cam(out.tokens, out.tag_ids), out.tag_attention, rtol=1e-4, atol=1e-3)
    assert np.all(out.block_norms > 0)
    w, b = backbone.classifier
    np.testing.assert_allclose(out.features @ w.T + b, out.logits, rtol=1e-3, atol=1e-3)
    one = backbone.forward(x[:1])  # batch independence
    np.testing.assert_allclose(one.logits, out.logits[:1], rtol=1e-4, atol=1e-4)


def test_torch_and_onnx_engines_agree(backbone, photos, tagood_home):
    from tagood.backbones.efficientnet import EfficientNetLite0

    t = EfficientNetLite0(engine="torch")
    x = np.stack([backbone.preprocess(p) for p in photos.values()])
    a, b = backbone.forward(x), t.forward(x)
    for f in ("logits", "features", "tokens", "block_norms"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=1e-3, atol=1e-3, err_msg=f)


def test_onnx_export_is_reused(backbone, tagood_home):
    from tagood.backbones.efficientnet import EfficientNetLite0

    p = backbone.onnx_path()
    mtime = p.stat().st_mtime_ns
    EfficientNetLite0(cache_dir=p.parent)
    assert p.stat().st_mtime_ns == mtime


def test_bad_batch_shape(backbone):
    with pytest.raises(ValueError, match="expected a batch"):
        backbone.forward(np.zeros((2, 3, 100, 100), np.float32))


def test_linear_head_separable_and_real(backbone):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 0.3, (50, 8)) for m in (0, 3, 6)])
    y = np.repeat(np.arange(3), 50)
    assert head_accuracy(fit_linear_head(x, y), x, y) == 1.0
    src = data.subsample_per_class(data.select_classes(data.fashion_mnist("test"), [0, 1, 5, 8]), 25, seed=0)
    feats = backbone.forward(np.stack([backbone.preprocess(src.load(i)) for i in range(len(src))])).features
    labels = np.array([s.label for s in src.samples])
    tr = np.arange(len(labels)) % 2 == 0
    acc = head_accuracy(fit_linear_head(feats[tr], labels[tr]), feats[~tr], labels[~tr])
    assert acc > 0.6  # chance is 0.25
