"""The IND linear head (tagood.detectors.head): exact folding of the standardisation, determinism, real features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tagood import data
from tagood.detectors.head import fit_linear_head, head_accuracy

torch.set_num_threads(1)


def _blobs(n_per: int, d: int, k: int, spread: float, seed: int = 0,
           noise_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``k`` Gaussian blobs (centres fixed by ``seed``, noise by ``noise_seed``)."""
    centres = np.random.default_rng(seed).normal(0, 3, (k, d))
    y = np.repeat(np.arange(k), n_per)
    noise = np.random.default_rng(seed + 1000 if noise_seed is None else noise_seed).normal(0, spread, (len(y), d))
    return centres[y] + noise, y


def test_separable_data_is_fitted_exactly():
    x, y = _blobs(40, 8, 3, 0.3)
    head = fit_linear_head(x, y)
    assert head.weight.shape == (3, 8) and head.bias.shape == (3,)
    assert head_accuracy(head, x, y) == 1.0
    xt, yt = _blobs(40, 8, 3, 0.3, noise_seed=7)  # held-out samples of the same blobs
    assert head_accuracy(head, xt, yt) == 1.0


def test_deterministic_and_wide_features_are_fast():
    x, y = _blobs(200, 1280, 10, 4.0)
    a = fit_linear_head(x, y, seed=0)
    b = fit_linear_head(x, y, seed=0)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)
    assert head_accuracy(a, x, y) > 0.99


@settings(max_examples=15, deadline=None)
@given(
    scales=st.lists(st.floats(0.05, 20.0) | st.floats(-20.0, -0.05), min_size=5, max_size=5),
    shifts=st.lists(st.floats(-100.0, 100.0), min_size=5, max_size=5),
)
def test_head_acts_on_raw_features_whatever_their_scale(scales, shifts):
    """Standardising then folding makes the fit invariant to a per-feature affine map of the
    features: the head fitted on a*x+b gives on a*x+b the logits the head fitted on x gives on x.
    A head that forgot to fold mean or scale into its weight/bias fails this."""
    x, y = _blobs(30, 5, 3, 1.5, seed=3)
    a, s = np.array(scales), np.array(shifts)
    ref = fit_linear_head(x, y)(x)
    got = fit_linear_head(x * a + s, y)(x * a + s)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * (1 + np.abs(ref).max()))


def test_constant_dimension_and_empty_class():
    x, y = _blobs(20, 4, 2, 0.5)
    x = np.concatenate([x, np.full((len(x), 1), 7.0)], axis=1)  # a constant feature
    head = fit_linear_head(x, y, num_classes=3)
    assert np.isfinite(head.weight).all() and np.isfinite(head.bias).all()
    assert head.weight.shape == (3, 5)
    probe = x.copy()
    probe[:, 4] = 1e3  # a feature that never varied in training must not blow the logits up
    assert np.abs(head(probe)).max() < 1e3
    assert (head(x).argmax(1) != 2).all()  # the class without samples is never predicted
    assert head_accuracy(head, x, y) == 1.0


def test_bad_inputs():
    x, y = _blobs(5, 3, 2, 0.1)
    with pytest.raises(ValueError, match="labels must be >= 0"):
        fit_linear_head(x, np.where(y == 0, -1, y))
    with pytest.raises(ValueError, match="features"):
        fit_linear_head(x[:4], y)
    with pytest.raises(ValueError, match="num_classes"):
        fit_linear_head(x, y, num_classes=1)
    with pytest.raises(ValueError, match="NaN"):
        fit_linear_head(np.where(x > 0, np.nan, x), y)


def test_real_fashion_mnist_features(backbone):
    """Pooled EfficientNet-Lite0 features of real Fashion-MNIST images are linearly separable far above chance."""
    src = data.subsample_per_class(data.fashion_mnist("test"), 24, seed=0)  # 10 classes x 24
    feats = backbone.forward(np.stack([backbone.preprocess(src.load(i)) for i in range(len(src))])).features
    labels = np.array([s.label for s in src.samples])
    train = np.arange(len(labels)) % 2 == 0
    acc = head_accuracy(fit_linear_head(feats[train], labels[train]), feats[~train], labels[~train])
    assert acc > 0.6, acc  # chance is 0.1
