"""The real EfficientNet-Lite2 backbone / CAM tagger (packaged ImageNet weights, 260 px, 9x9 grid),
sharing one implementation with Lite0, and the backbone factory entry ``efficientnet-lite2``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tagood.core.types import Backbone

torch.set_num_threads(1)

STAMPS = Path("/usr/share/tuxpaint/stamps")


def _close(a: np.ndarray, b: np.ndarray, tol: float = 1e-4, what: str = "") -> None:
    scale = max(1.0, float(np.abs(b).max()))
    assert np.abs(np.asarray(a, np.float64) - b).max() <= tol * scale, what


@pytest.fixture(scope="module")
def lite2(tagood_home):
    from tagood.backbones.efficientnet import EfficientNetLite2

    return EfficientNetLite2(cache_dir=tagood_home / "onnx", num_threads=2)


@pytest.fixture(scope="module")
def real_photos(photos):
    """sklearn's two photos, scikit-image's cat and coffee, and a photographic Tux Paint stamp on white."""
    from skimage import data

    out = dict(photos)
    out["chelsea"] = Image.fromarray(data.chelsea())
    out["coffee"] = Image.fromarray(data.coffee())
    p = STAMPS / "animals/birds/pink_flamingo.png"
    if p.exists():
        rgba = Image.open(p).convert("RGBA")
        out["flamingo"] = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return out


@pytest.fixture(scope="module")
def batch(lite2, real_photos):
    return np.stack([lite2.preprocess(p) for p in real_photos.values()])


def test_identity_differs_from_lite0_and_lite0_is_unchanged(lite2, backbone):
    assert isinstance(lite2, Backbone)
    assert lite2.id == "efficientnet-lite2" and lite2.transform_id == "rgb-resize292-crop260-x127d128"
    assert lite2.n_tokens == 81 and len(lite2.weights_hash) == 16 and lite2.engine == "onnx"
    # Lite0's cache identity is what it was before the refactor (feature caches stay valid)
    assert (backbone.id, backbone.transform_id, backbone.n_tokens) == ("efficientnet-lite0", "rgb-resize256-crop224-x127d128", 49)
    assert backbone.onnx_path().name == f"efficientnet-lite0-{backbone.weights_hash}-tagger-top10-v2.onnx"
    assert lite2.weights_hash != backbone.weights_hash and lite2.onnx_path() != backbone.onnx_path()
    assert lite2.onnx_path().exists() and lite2.weights_hash in lite2.onnx_path().name
    w, b = lite2.classifier
    assert w.shape == (1000, 1280) and b.shape == (1000,) and not np.allclose(w, backbone.classifier[0])


def test_preprocess_and_token_geometry(lite2, photos):
    img = photos["china.jpg"]  # 640 x 427
    x = lite2.preprocess(img)
    assert x.shape == (3, 260, 260) and x.dtype == np.float32
    # one-step resize+crop == shorter side to 292 then centre crop 260 (to resampling rounding)
    w, h = img.size
    s = 292 / min(w, h)
    big = img.resize((round(w * s), round(h * s)), Image.BILINEAR)
    left, top = (big.width - 260) // 2, (big.height - 260) // 2
    ref = (np.asarray(big.crop((left, top, left + 260, top + 260)), np.float32) - 127) / 128
    assert np.abs(x.transpose(1, 2, 0) - ref).mean() < 4 / 128
    box, grid, prefix = lite2.token_geometry(w, h)
    side = 260 * 427 / 292
    np.testing.assert_allclose(box, ((640 - side) / 2, (427 - side) / 2, (640 + side) / 2, (427 + side) / 2))
    assert grid == (9, 9) and prefix == 0
    box2, grid2, _ = lite2.token_geometry(100, 300)  # portrait: the crop spans the width's 260/292
    np.testing.assert_allclose(box2, (50 - 44.52054794520548, 150 - 44.52054794520548,
                                      50 + 44.52054794520548, 150 + 44.52054794520548))
    g = lite2.preprocess(Image.new("L", (28, 28), 200))
    assert g.shape == (3, 260, 260) and np.allclose(g, (200 - 127) / 128)


def test_real_photos_get_sensible_top1(lite2, real_photos, batch):
    out = lite2.forward(batch)
    names = lite2.tag_names
    top1 = dict(zip(real_photos, (names[int(i)] for i in out.tag_ids[:, 0]), strict=True))  # batch: one row per photo
    assert top1["china.jpg"] in {"palace", "monastery", "stupa", "bell-cot"}, top1
    assert top1["chelsea"] in {"tabby cat", "tiger cat", "Egyptian Mau"}, top1
    assert top1["coffee"] in {"espresso", "cup", "coffee mug"}, top1
    if "flamingo" in top1:
        assert top1["flamingo"] == "flamingo", top1
    top5_flower = {names[int(i)] for i in out.tag_ids[list(real_photos).index("flower.jpg"), :5]}
    assert {"daisy", "bee", "rapeseed", "yellow lady's slipper"} & top5_flower, top5_flower  # a bee on a flower


def test_outputs_and_cams(lite2, batch):
    out = lite2.forward(batch)
    n = len(batch)
    shapes = {"logits": (n, 1000), "features": (n, 1280), "tokens": (n, 81, 1280), "tag_probs": (n, 1000),
              "tag_ids": (n, 10), "tag_attention": (n, 10, 81), "block_norms": (n, 22)}
    for f, shape in shapes.items():
        assert getattr(out, f).shape == shape, f
    _close(out.tokens.mean(axis=1), out.features, what="tokens mean == pooled features")
    w, b = lite2.classifier
    top = out.logits.argmax(1)
    assert np.array_equal(out.tag_ids[:, 0], top)
    # the top class's CAM is w_c . token for each of the 81 tokens (Zhou et al., CVPR 2016; no bias)
    want = np.einsum("bd,bnd->bn", w[top].astype(np.float64), out.tokens.astype(np.float64))
    _close(out.tag_attention[:, 0], want, what="CAM of the top class == w_c . token")
    _close(lite2.cam(out.tokens, out.tag_ids), out.tag_attention, what="cam() == forward's tag_attention")
    _close(out.features @ w.T + b, out.logits, what="fc on features")
    assert np.all(out.block_norms > 0) and np.isfinite(out.block_norms).all()


def test_torch_and_onnx_engines_agree(lite2, batch):
    from tagood.backbones.efficientnet import EfficientNetLite2

    t = EfficientNetLite2(engine="torch", num_threads=1)
    a, b = lite2.forward(batch), t.forward(batch)
    for f in ("logits", "features", "tokens", "tag_probs", "tag_attention", "block_norms"):
        _close(getattr(a, f), getattr(b, f), tol=1e-4, what=f)
    np.testing.assert_array_equal(a.tag_ids[:, :3], b.tag_ids[:, :3])
    # the head's FeatureNorm (last block norm) from the torch module's own feature map
    m = t.module.f
    with torch.inference_mode():
        fmap = m(torch.from_numpy(batch[:1].copy()))[0]
    _close(a.block_norms[:1, -1], torch.relu(fmap).flatten(2).norm(dim=2).mean(1).numpy(), what="head FeatureNorm")


def test_factory_builds_lite2_and_rejects_wrong_batches(lite2, tagood_home):
    from tagood.backbones.efficientnet import EfficientNetLite, EfficientNetLite2
    from tagood.backbones.factory import build_backbone

    bb = build_backbone({"name": "efficientnet-lite2", "cache_dir": str(tagood_home / "onnx"), "num_threads": 1})
    assert isinstance(bb, EfficientNetLite2) and bb.onnx_path() == lite2.onnx_path()
    with pytest.raises(ValueError, match=r"efficientnet-lite2 expected a batch of shape \(B,3,260,260\)"):
        bb.forward(np.zeros((1, 3, 224, 224), np.float32))
    with pytest.raises(ValueError, match="efficientnet-lite2"):
        build_backbone({"name": "efficientnet-lite7"})
    with pytest.raises(TypeError, match="no variant"):
        EfficientNetLite()
