"""Tests that kill the mutants of KNN and ODIN that the known-answer tests left alive (benchmarks/mutation.py).

Each test states a behaviour a user relies on: the functional defaults (KNN's k = 50 and float32 bank, ODIN's
T = 1000 and eps = 0.0014 from Liang et al., ICLR 2018), empty inputs giving empty scores, ODIN's fast inference
path (``model.predict``), the std a model declares on a submodule, the per-channel step on inputs of any rank,
and the behaviour at zero gradients (``x' = x - eps * sign(grad)``: a pixel the logits do not depend on is not
moved). Expected values are computed here from the formulas, never from the detector's own state.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tagood
from tagood.core.images import ImageStream
from tagood.detectors import knn, odin

# ---------------------------------------------------------------- KNN (Sun et al., ICML 2022)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _kth(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """float64 k-th smallest Euclidean distance between unit vectors (the paper's score)."""
    d = np.linalg.norm(_unit(queries)[:, None, :] - bank[None, :, :].astype(np.float64), axis=2)
    return np.sort(d, axis=1)[:, k - 1]


def test_knn_functional_default_k_is_50() -> None:
    rng = np.random.default_rng(0)
    bank = knn.make_bank(rng.normal(size=(80, 6)))
    q = rng.normal(size=(7, 6))
    np.testing.assert_allclose(knn.score(q, bank), _kth(q, bank, 50), atol=1e-5)
    assert not np.allclose(_kth(q, bank, 50), _kth(q, bank, 51), atol=1e-5)  # the test can tell 50 from 51


def test_knn_bank_defaults_float32_k50_and_seed0() -> None:
    x = np.random.default_rng(1).normal(size=(60, 5))
    full = knn.make_bank(x)
    assert full.dtype == np.float32 and full.shape == (60, 5)  # a float64 bank would double its memory
    np.testing.assert_allclose(full, _unit(x), atol=1e-6)
    sub = knn.make_bank(x, alpha=0.5)  # max(k=50, 30) rows, seeded with 0
    assert sub.shape == (50, 5) and sub.dtype == np.float32
    np.testing.assert_array_equal(sub, knn.make_bank(x, k=50, alpha=0.5, seed=0))
    assert not np.array_equal(sub, knn.make_bank(x, k=50, alpha=0.5, seed=1))


def test_knn_scores_with_a_float64_bank() -> None:
    """A bank the user built in float64 is scored like the float32 one (the bank is cast, not matmul'd as is)."""
    rng = np.random.default_rng(5)
    bank = _unit(rng.normal(size=(30, 4)))
    q = rng.normal(size=(6, 4))
    np.testing.assert_allclose(knn.score(q, bank, k=5), _kth(q, bank, 5), atol=1e-5)
    np.testing.assert_array_equal(knn.score(q, bank, k=5), knn.score(q, bank.astype(np.float32), k=5))


def test_knn_empty_queries_give_empty_scores() -> None:
    bank = knn.make_bank(np.random.default_rng(2).normal(size=(10, 4)))
    out = knn.score(np.zeros((0, 4)), bank, k=3)
    assert out.shape == (0,)


def test_knn_k_equal_to_the_training_count_is_accepted() -> None:
    x = np.random.default_rng(3).normal(size=(12, 4))
    det = tagood.create("knn", k=12).fit(tagood.FeatureSet(features=x))
    q = np.random.default_rng(4).normal(size=(3, 4))
    np.testing.assert_allclose(det.score(tagood.FeatureSet(features=q)), _kth(q, _unit(x), 12), atol=1e-5)
    with pytest.raises(tagood.TagoodError):
        tagood.create("knn", k=13).fit(tagood.FeatureSet(features=x))


# ---------------------------------------------------------------- ODIN (Liang et al., ICLR 2018)


class _Linear(torch.nn.Module):
    """Logits W x_flat + b of (B, C, H, W) images; float32."""

    def __init__(self, w: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float32), requires_grad=False)
        self.b = torch.nn.Parameter(torch.as_tensor(b, dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def _odin_by_hand(x: np.ndarray, w: np.ndarray, b: np.ndarray, t: float, eps: float, std: np.ndarray) -> np.ndarray:
    """Eq. 1-2 of the paper for a linear model, in float64: x' = x - (eps/std) sign(-grad log S_yhat(x; T)),
    score = -max softmax(f(x') / T)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    z = flat @ w.T + b
    p = np.exp((z - z.max(1, keepdims=True)) / t)
    p /= p.sum(1, keepdims=True)
    y = z.argmax(1)
    grad = -(w[y] - p @ w) / t  # d(-log softmax_y(z/T)) / dx for z = W x + b
    step = np.broadcast_to((eps / std).reshape(1, -1, *([1] * (x.ndim - 2))), x.shape).reshape(len(x), -1)
    z2 = (flat - step * np.sign(grad)) @ w.T + b
    p2 = np.exp((z2 - z2.max(1, keepdims=True)) / t)
    p2 /= p2.sum(1, keepdims=True)
    return -p2.max(1)


def _case(seed: int = 0, channels: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, channels, 2, 2)).astype(np.float32)
    w = rng.normal(size=(4, channels * 4)) * 3.0
    b = rng.normal(size=4)
    return x, w, b


def test_odin_functional_defaults_are_the_papers() -> None:
    x, w, b = _case()
    m = _Linear(w, b)
    got = odin.score(x, m)  # T = 1000, eps = 0.0014, EfficientNet-Lite's std 128/255
    want = _odin_by_hand(x, w, b, 1000.0, 0.0014, np.array([128 / 255]))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(got, odin.score(x, m, temperature=1000.0, epsilon=0.0014, pixel_std=128 / 255))
    assert not np.array_equal(got, odin.score(x, m, temperature=1001.0))


def test_odin_float64_images_are_scored_in_float32() -> None:
    x, w, b = _case(1)
    m = _Linear(w, b)
    np.testing.assert_array_equal(odin.score(x.astype(np.float64), m), odin.score(x, m))


def test_odin_reads_the_std_a_submodule_declares() -> None:
    x, w, b = _case(2)

    class Features(torch.nn.Module):
        pixel_std = (0.2, 0.5, 1.0)

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return v

    model = torch.nn.Sequential(Features(), _Linear(w, b))
    assert odin.declared_pixel_std(model) == (0.2, 0.5, 1.0)
    want = _odin_by_hand(x, w, b, 1000.0, 0.0014, np.array([0.2, 0.5, 1.0]))
    np.testing.assert_allclose(odin.score(x, model), want, atol=1e-7)

    class Plain:  # not a torch module: its own attribute is read
        pixel_std = 0.25

    assert odin.declared_pixel_std(Plain()) == (0.25,)  # type: ignore[arg-type]
    assert odin.declared_pixel_std(_Linear(w, b)) is None


def test_odin_uses_the_models_predict_for_the_perturbed_pass() -> None:
    x, w, b = _case(3)

    class WithPredict(_Linear):
        def predict(self, v: torch.Tensor) -> torch.Tensor:  # the fast inference path: here constant logits
            return torch.tensor([[0.0, 1.0, 2.0, 3.0]], dtype=torch.float64).expand(len(v), 4)

    got = odin.score(x, WithPredict(w, b), temperature=1.0)
    p = np.exp([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(got, np.full(len(x), -p.max() / p.sum()), atol=1e-12)


def test_odin_scores_an_image_stream_and_empty_input() -> None:
    x, w, b = _case(4)
    m = _Linear(w, b)

    class Stream:  # only batches(size): no len, no indexing
        def batches(self, size: int):
            for i in range(0, len(x), size):
                yield x[i : i + size]

    np.testing.assert_allclose(odin.score(Stream(), m, batch_size=2), odin.score(x, m), rtol=0, atol=1e-9)
    assert odin.score(np.zeros((0, 3, 2, 2), np.float32), m).shape == (0,)
    det = tagood.create("odin").attach(tagood.Context(model=m))
    assert det.score(tagood.FeatureSet(images=ImageStream(np.zeros((0, 3, 2, 2), np.float32)))).shape == (0,)
    np.testing.assert_array_equal(det.score(tagood.FeatureSet(images=ImageStream(x))), odin.score(x, m))


def test_odin_pixel_std_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        odin.pixel_stds(None, 0.0)
    with pytest.raises(ValueError, match="positive"):
        odin.pixel_stds(None, [0.5, 0.0, 0.5])
    assert odin.pixel_stds(None, [1, 2, 4]) == (1.0, 2.0, 4.0)


def test_odin_step_per_channel_on_inputs_of_any_rank() -> None:
    std = (0.5, 1.0, 2.0)
    flat = odin._step(torch.zeros(4, 3), 0.1, std)  # (B, C): features, no spatial dims
    np.testing.assert_allclose(flat.numpy().reshape(-1), [0.2, 0.1, 0.05], rtol=1e-6)
    assert tuple(flat.shape) == (1, 3)
    img = odin._step(torch.zeros(2, 3, 5, 5), 0.1, std)
    assert tuple(img.shape) == (1, 3, 1, 1)
    with pytest.raises(ValueError, match="per-channel"):
        odin._step(torch.zeros(2, 4, 5, 5), 0.1, std)
    with pytest.raises(ValueError, match="per-channel"):
        odin._step(torch.zeros(3), 0.1, std)


def test_odin_leaves_pixels_with_zero_gradient_in_place() -> None:
    """Logits that read only channel 0: the other channels' gradient is 0 and sign(0) = 0, so they do not move
    and the score stays finite and equals the formula's."""
    x, w, b = _case(5)
    w = w.reshape(4, 3, 4).copy()
    w[:, 1:, :] = 0.0
    w = w.reshape(4, 12)
    got = odin.score(x, _Linear(w, b), temperature=1.0, epsilon=0.01, pixel_std=1.0)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _odin_by_hand(x, w, b, 1.0, 0.01, np.array([1.0])), atol=1e-7)
