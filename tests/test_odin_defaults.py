"""ODIN at its default temperature and perturbation size (Liang, Li & Srikant, ICLR 2018) against a
hand computation in float64 numpy on a tiny linear classifier, whose input gradient has a closed form.

ODIN's paper: T = 1000 for every network; eps chosen on held-out data from 21 values in [0, 0.004]
(0.0014 for DenseNet-BC on CIFAR-10, the value OpenOOD uses for ImageNet). ``eps`` is in [0,1]
pixel units: the step on the *normalised* input is ``eps / std``. Score sign: higher = more OOD.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tagood.detectors as detectors
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.images import ImageStream

C, SHAPE = 5, (3, 4, 4)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(int(np.prod(SHAPE)), C)
    with torch.no_grad():  # logits a few units apart, so the argmax and the gradient signs are clear-cut
        lin.weight.mul_(8.0)
    return torch.nn.Sequential(torch.nn.Flatten(), lin).eval()


def _hand_odin(model: torch.nn.Module, x: np.ndarray, t: float, eps: float, std: float) -> np.ndarray:
    """ODIN by hand: z = Wx + b; y = argmax z; d CE(z/T, y)/dx = W^T (softmax(z/T) - onehot(y)) / T;
    x' = x - (eps/std) sign(grad); score = -max softmax((Wx' + b)/T)."""
    lin = model[1]
    w = lin.weight.detach().double().numpy()
    b = lin.bias.detach().double().numpy()
    xf = x.reshape(len(x), -1).astype(np.float64)

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    z = xf @ w.T + b
    p = softmax(z / t)
    onehot = np.eye(C)[z.argmax(1)]
    grad = (p - onehot) @ w / t
    assert np.abs(grad).min() > 1e-9  # no sign is decided by rounding
    x2 = xf - (eps / std) * np.sign(grad)
    return -softmax((x2 @ w.T + b) / t).max(1)


def test_odin_defaults_are_the_papers() -> None:
    det = detectors.create("odin")
    assert det.t == 1000.0 and det.eps == 0.0014
    assert det.hparams["temperature"] == 1000.0 and det.hparams["epsilon"] == 0.0014


@pytest.mark.parametrize("std", [128.0 / 255.0, 0.229])
def test_odin_default_t_and_eps_equal_hand_perturbation(std: float) -> None:
    model = _model()
    x = np.random.default_rng(0).normal(size=(7, *SHAPE)).astype(np.float32)
    det = detectors.create("odin", pixel_std=std).fit(FeatureSet(), Context(model=model))
    got = det.score(FeatureSet(images=ImageStream(x)))
    want = _hand_odin(model, x, 1000.0, 0.0014, std)
    # the scores differ from -1/C by ~1e-3 at T = 1000; agree to float32 rounding of the logits
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-9)
    # a different T or eps gives measurably different scores (so the comparison above can fail)
    for t, eps in ((1.0, 0.0014), (1000.0, 0.0), (1000.0, 0.004)):
        other = _hand_odin(model, x, t, eps, std)
        assert np.abs(other - want).max() > 1e-6, (t, eps)
    # the perturbation raises the (tempered) max softmax: scores fall below those of the plain input
    plain = _hand_odin(model, x, 1000.0, 0.0, std)
    assert np.all(got < plain)


def test_odin_batch_size_default_and_batch_independence() -> None:
    """The default batch is 8 on the CPU (16 on accelerators); a score does not depend on its batch: the mean
    cross-entropy scales each image's gradient by 1/B, which leaves its sign alone (scores differ ~1e-10)."""
    model = _model()
    x = np.random.default_rng(1).normal(size=(11, *SHAPE)).astype(np.float32)
    data = FeatureSet(images=ImageStream(x))
    det = detectors.create("odin").fit(FeatureSet(), Context(model=model))
    assert det.bs == 8 and det.hparams["batch_size"] is None
    want = det.score(data)
    for bs in (1, 3, 16):
        other = detectors.create("odin", batch_size=bs).fit(FeatureSet(), Context(model=model))
        assert other.bs == bs
        np.testing.assert_allclose(other.score(data), want, rtol=0, atol=1e-8)  # float rounding of batched logits
