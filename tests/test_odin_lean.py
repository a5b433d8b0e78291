"""The lean differentiable EfficientNet-Lite (BatchNorm folded, pooled features only) computes the same
function as the full feature graph, on real photos with the real ImageNet weights, and ODIN's scores
and input-gradient signs through it equal those through the full graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tagood.backbones.efficientnet import LITE0, LITE2, LiteFeatures, load_lite
from tagood.backbones.lite_pooled import LitePooled


def _images(photos, size: int) -> torch.Tensor:
    """The two sklearn sample photos and their mirror images, resized to ``size`` and normalised as Lite does."""
    arrs = []
    for im in photos.values():
        a = np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32)
        arrs += [a, a[:, ::-1]]
    x = (np.stack(arrs) - 127.0) / 128.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("variant", [LITE0, LITE2], ids=lambda v: v.name)
def test_lean_pooled_equals_full_graph(photos, variant):
    model = load_lite(variant)
    full, lean = LiteFeatures(model).eval(), LitePooled(model)
    x = _images(photos, variant.crop)
    with torch.inference_mode():
        want, got = full(x)[1], lean(x)
    assert got.shape == (len(x), 1280)
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-5 * max(1.0, scale) * 10, "folded BatchNorm changed the features"
    # the test can fail: an unfolded BatchNorm (identity) gives different features
    broken = LitePooled(model)
    with torch.no_grad():
        broken.stem[0][1].weight.mul_(1.01)
        assert float((broken(x) - want).abs().max()) > 1e-3


def test_symmetric_same_padding_folds_into_the_convolution(photos):
    """Stride-1 "same" paddings become the convolution's own padding (no zero-pad operator left), stride-2 ones
    (one more on the right/bottom) stay in front; the input gradient is bit for bit that of the graph with every
    padding as a separate operator."""
    import copy

    from torch import nn

    lean = LitePooled(load_lite(LITE0))
    convs = [m for m in lean.modules() if isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[1], nn.Conv2d)]
    outside = [m for m in convs if isinstance(m[0], nn.ZeroPad2d)]
    assert outside and all(m[1].stride == (2, 2) for m in outside)
    assert sum(m[1].padding != (0, 0) for m in convs) >= 10
    unfolded = copy.deepcopy(lean)
    for m in unfolded.modules():
        if isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[1], nn.Conv2d) and m[1].padding != (0, 0):
            m[0], m[1].padding = nn.ZeroPad2d(m[1].padding[0]), (0, 0)
    x = _images(photos, LITE0.crop)
    grads = []
    for g in (lean, unfolded):
        xt = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(g(xt).square().sum(), xt)
        grads.append(grad)
    assert torch.equal(grads[0], grads[1])
    assert float(grads[0].abs().max()) > 0


def test_lean_refuses_train_mode():
    with pytest.raises(ValueError, match="eval mode"):
        LitePooled(load_lite(LITE0).train())


def test_odin_through_lean_equals_full(photos):
    """ODIN (T = 1000, eps = 0.0014 / std) through both graphs: same gradient signs (but for a few pixels whose
    gradient is ~0) and the same scores to far below their spread."""
    torch.manual_seed(0)
    model = load_lite(LITE0)
    head = torch.nn.Linear(1280, 6)
    graphs = {"full": torch.nn.Sequential(_Pooled(LiteFeatures(model).eval()), head),
              "lean": torch.nn.Sequential(LitePooled(model), head)}
    x = _images(photos, LITE0.crop)
    out = {}
    for name, g in graphs.items():
        xt = x.clone().requires_grad_(True)
        logits = g(xt) / 1000.0
        loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1))
        (grad,) = torch.autograd.grad(loss, xt)
        x2 = xt.detach() - (0.0014 / (128 / 255)) * torch.sign(grad)
        with torch.no_grad():
            s = torch.softmax(g(x2).double() / 1000.0, 1).max(1).values
        out[name] = (torch.sign(grad), s)
    agree = float((out["full"][0] == out["lean"][0]).double().mean())
    assert agree > 0.999, agree
    spread = float(out["full"][1].max() - out["full"][1].min())
    assert spread > 0
    assert float((out["full"][1] - out["lean"][1]).abs().max()) < 1e-3 * spread


class _Pooled(torch.nn.Module):
    def __init__(self, f: LiteFeatures) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)[1]


def test_classifier_predict_equals_its_torch_forward(backbone, photos):
    """``Classifier.predict`` (onnxruntime engine) gives the logits of its differentiable torch forward (lean
    graph + head) on real photos, and ODIN scores through both paths agree far below their spread."""
    from tagood.core.context import Context
    from tagood.core.featureset import FeatureSet
    from tagood.core.images import ImageStream
    from tagood.core.types import LinearHead
    from tagood.detectors.head import Classifier
    from tagood.detectors.odin import ODIN

    rng = np.random.default_rng(0)
    head = LinearHead(rng.standard_normal((6, 1280)).astype(np.float32) * 0.05, rng.standard_normal(6).astype(np.float32))
    clf = Classifier(backbone, head)
    assert clf._engine is backbone  # the CPU backbone runs onnxruntime
    x = _images(photos, LITE0.crop).numpy()
    with torch.inference_mode():
        want = clf(torch.from_numpy(x)).double().numpy()
    got = clf.predict(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (len(x), 6)
    np.testing.assert_allclose(got, want, atol=1e-3 * max(1.0, float(np.abs(want).max())))

    class _TorchOnly(torch.nn.Module):  # the same model without the engine path
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.m(t)

    data = FeatureSet(labels=np.zeros(len(x), dtype=np.int64), images=ImageStream(x))
    fast = ODIN().fit(data, Context(model=clf)).score(data)
    slow = ODIN().fit(data, Context(model=_TorchOnly(clf))).score(data)
    spread = float(slow.max() - slow.min())
    assert spread > 0 and float(np.abs(fast - slow).max()) < 1e-2 * spread
