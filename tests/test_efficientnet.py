"""The real EfficientNet-Lite0 backbone / CAM tagger (packaged ImageNet weights) and the ImageNet name assets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagood.assets import imagenet_classes, imagenet_synonyms, imagenet_wnids
from tagood.core.types import Backbone

torch.set_num_threads(1)


def _close(a: np.ndarray, b: np.ndarray, tol: float = 1e-4, what: str = "") -> None:
    """Equal to ``tol`` relative to the magnitude of the values (features reach ~10, block norms ~500)."""
    scale = max(1.0, float(np.abs(b).max()))
    assert np.abs(np.asarray(a, np.float64) - b).max() <= tol * scale, what


@pytest.fixture(scope="module")
def photo_batch(backbone, photos):
    return np.stack([backbone.preprocess(p) for p in photos.values()])


def test_assets():
    names, wnids = imagenet_classes(), imagenet_wnids()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert len(wnids) == 1000 and len(set(wnids)) == 1000
    assert all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w in wnids)
    assert (wnids[0], names[0]) == ("n01440764", "tench") and (wnids[-1], names[-1]) == ("n15075141", "toilet paper")
    assert len(imagenet_synonyms()) == 1000 and imagenet_synonyms()[1][0] == "goldfish"


def test_protocol_and_identity(backbone):
    assert isinstance(backbone, Backbone)
    assert backbone.id == "efficientnet-lite0" and len(backbone.weights_hash) == 16
    assert backbone.engine == "onnx" and backbone.num_threads >= 1
    assert len(backbone.tag_names) == 1000
    w, b = backbone.classifier
    assert w.shape == (1000, 1280) and b.shape == (1000,)


def test_preprocess(backbone, photos):
    from PIL import Image

    x = backbone.preprocess(photos["china.jpg"])
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert -127 / 128 - 1e-6 <= x.min() and x.max() <= 128 / 128 + 1e-6  # (x - 127) / 128 of 0..255
    # one-step resize+crop == shorter side to 256 then centre crop 224 (to resampling rounding)
    img = photos["china.jpg"]
    w, h = img.size
    s = 256 / min(w, h)
    big = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
    left, top = (big.width - 224) // 2, (big.height - 224) // 2
    ref = (np.asarray(big.crop((left, top, left + 224, top + 224)), np.float32) - 127) / 128
    assert np.abs(x.transpose(1, 2, 0) - ref).mean() < 4 / 128
    # grey and tiny images work too
    g = backbone.preprocess(Image.new("L", (28, 28), 200))
    assert g.shape == (3, 224, 224) and np.allclose(g, (200 - 127) / 128)


def test_real_photos_are_recognised(backbone, photo_batch):
    out = backbone.forward(photo_batch)
    top5 = [[backbone.tag_names[j] for j in out.tag_ids[i][:5]] for i in range(2)]
    assert {"palace", "monastery", "castle", "bell-cot", "stupa", "pagoda"} & set(top5[0]), top5[0]
    assert {"daisy", "bee", "pot", "vase", "rapeseed", "yellow lady's slipper"} & set(top5[1]), top5[1]


def test_outputs_consistent(backbone, photo_batch):
    out = backbone.forward(photo_batch)
    n = len(photo_batch)
    shapes = {"logits": (n, 1000), "features": (n, 1280), "tokens": (n, 49, 1280), "tag_probs": (n, 1000),
              "tag_ids": (n, 10), "tag_attention": (n, 10, 49), "block_norms": (n, 17)}
    for f, shape in shapes.items():
        assert getattr(out, f).shape == shape, f
    assert out.tokens.flags.c_contiguous and out.tag_ids.dtype == np.int64
    _close(out.tokens.mean(axis=1), out.features, what="tokens mean == pooled features")
    np.testing.assert_allclose(out.tag_probs.sum(1), 1.0, rtol=1e-5)
    p = np.take_along_axis(out.tag_probs, out.tag_ids, 1)
    assert np.all(np.diff(p, axis=1) <= 0)  # top-k sorted by probability
    np.testing.assert_array_equal(np.sort(p, axis=1)[:, ::-1], -np.sort(-out.tag_probs, axis=1)[:, :10])  # and really the top 10
    assert np.array_equal(out.tag_ids[:, 0], out.logits.argmax(1))
    _close(backbone.cam(out.tokens, out.tag_ids), out.tag_attention, what="cam() == forward's tag_attention")
    w, b = backbone.classifier
    # CAM is the class score before pooling: the mean of the map plus the bias is the logit
    _close(out.tag_attention.mean(2) + b[out.tag_ids], np.take_along_axis(out.logits, out.tag_ids, 1), what="CAM mean")
    _close(out.features @ w.T + b, out.logits, what="fc on features")
    cam_any = backbone.cam(out.tokens.astype(np.float16), np.array([[1, 2, 3]] * n))  # arbitrary tags, fp16 cache
    assert cam_any.shape == (n, 3, 49) and cam_any.dtype == np.float32
    assert np.all(out.block_norms > 0) and np.isfinite(out.block_norms).all()


@pytest.mark.parametrize("n", [1, 3, 5, 13])
def test_odd_batch_sizes_match_one_big_batch(backbone, photo_batch, n, tagood_home):
    from tagood.backbones.efficientnet import EfficientNetLite0

    rng = np.random.default_rng(n)
    x = np.concatenate([photo_batch, photo_batch[:, :, ::-1], photo_batch[:, :, :, ::-1]] * 3)[:n]
    x = x + rng.normal(0, 0.05, x.shape).astype(np.float32)
    whole = backbone.forward(x)
    small = EfficientNetLite0(batch_size=4, num_threads=2, cache_dir=backbone.cache_dir).forward(x)  # chunks + parts
    for f in ("logits", "features", "tokens", "block_norms", "tag_attention"):
        _close(getattr(small, f), getattr(whole, f), what=f)
    np.testing.assert_array_equal(small.tag_ids[:, :3], whole.tag_ids[:, :3])
    one = backbone.forward(x[-1:])
    _close(one.logits, whole.logits[-1:], what="batch independence")


def test_torch_and_onnx_engines_agree(backbone, photo_batch):
    from tagood.backbones.efficientnet import EfficientNetLite0

    t = EfficientNetLite0(engine="torch", num_threads=1)
    a, b = backbone.forward(photo_batch), t.forward(photo_batch)
    for f in ("logits", "features", "tokens", "tag_probs", "tag_attention", "block_norms"):
        _close(getattr(a, f), getattr(b, f), tol=1e-4, what=f)
    np.testing.assert_array_equal(a.tag_ids[:, :3], b.tag_ids[:, :3])


def test_block_norms_are_featurenorm(backbone, photo_batch):
    """block_norms[:, i] = mean over channels of the spatial L2 norm of ReLU(output of block i) (Yu et al., CVPR 2023)."""
    from tagood.backbones.efficientnet import load_lite0

    m = load_lite0()
    x = torch.from_numpy(photo_batch[:1].copy())
    with torch.inference_mode():
        h = m._swish(m._bn0(m._conv_stem(x)))
        for blk in m._blocks[:5]:
            h = blk(h)
        want = torch.relu(h).pow(2).sum(dim=(2, 3)).sqrt().mean(dim=1).numpy()
    _close(backbone.forward(photo_batch[:1]).block_norms[:, 4], want, what="block 5 norm")


def test_torch_module_is_differentiable(backbone, photo_batch):
    mod = backbone.torch_module()
    x = torch.from_numpy(photo_batch[:1].copy()).requires_grad_(True)
    feats = mod(x)
    assert feats.shape == (1, 1280)
    _close(feats.detach().numpy(), backbone.forward(photo_batch[:1]).features, what="torch_module features")
    feats.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_onnx_export_is_reused(backbone, monkeypatch):
    import tagood.backbones.efficientnet as eff

    p = backbone.onnx_path()
    assert p.exists() and p.parent == backbone.cache_dir and backbone.weights_hash in p.name
    mtime = p.stat().st_mtime_ns

    def no_export(*a, **k):
        raise AssertionError("the ONNX model was exported again")

    monkeypatch.setattr(eff, "export_onnx", no_export)
    eff.EfficientNetLite0(cache_dir=p.parent)
    assert p.stat().st_mtime_ns == mtime
    assert not list(p.parent.glob("*.tmp"))  # atomic write leaves no temporary files


def test_fresh_cache_dir_exports_once(tmp_path, backbone):
    from tagood.backbones.efficientnet import EfficientNetLite0

    bb = EfficientNetLite0(cache_dir=tmp_path / "onnx", num_threads=1)
    assert bb.onnx_path().exists() and bb.onnx_path().parent == tmp_path / "onnx"
    x = np.zeros((2, 3, 224, 224), np.float32)
    _close(bb.forward(x).logits, backbone.forward(x).logits, what="fresh export gives the same model")


def test_pooled_logits_equal_the_full_graph(tmp_path, backbone, photo_batch, monkeypatch):
    """The pooled-only graph (KR-NFT's crops, ODIN's perturbed pass) gives the full tagger graph's features and
    logits to the last bit, in the same chunks and parts; it is exported once, and the torch engine gives forward's."""
    import tagood.backbones.efficientnet as eff

    x = np.concatenate([photo_batch, photo_batch[:, :, ::-1]])
    bb = eff.EfficientNetLite0(cache_dir=tmp_path / "onnx", num_threads=2, batch_size=4)
    full = bb.forward(x)
    feats, logits = bb.pooled_logits(x)
    np.testing.assert_array_equal(feats, full.features)
    np.testing.assert_array_equal(logits, full.logits)
    p = bb.onnx_path(graph="pooled")
    assert p.exists() and p != bb.onnx_path() and bb.weights_hash in p.name

    def no_export(*a, **k):
        raise AssertionError("the pooled graph was exported again")

    monkeypatch.setattr(eff, "export_onnx", no_export)
    again = eff.EfficientNetLite0(cache_dir=tmp_path / "onnx", num_threads=2, batch_size=4).pooled_logits(x[:3])
    np.testing.assert_array_equal(again[1], logits[:3])
    t = eff.EfficientNetLite0(engine="torch", num_threads=1)
    tf, tl = t.pooled_logits(x[:2])
    np.testing.assert_array_equal(tl, t.forward(x[:2]).logits)
    _close(tf, feats[:2], what="torch engine pooled features")
    with pytest.raises(ValueError, match="expected a batch"):
        bb.pooled_logits(x[:, :, :100])
    with pytest.raises(ValueError, match="graph must be"):
        bb.onnx_path(graph="tokens")


def test_physical_cores():
    import os

    from tagood.backbones.onnx_engine import physical_cores

    assert 1 <= physical_cores() <= (os.cpu_count() or 1)


def test_bad_arguments(backbone):
    from tagood.backbones.efficientnet import EfficientNetLite0

    with pytest.raises(ValueError, match="expected a batch"):
        backbone.forward(np.zeros((2, 3, 100, 100), np.float32))
    with pytest.raises(ValueError, match="engine"):
        EfficientNetLite0(engine="tensorrt")
