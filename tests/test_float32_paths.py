"""The float32 paths of the classic detectors (MSP, Energy, MaxLogit, ViM, ReAct, ASH, KNN): float32 / float16 inputs
are computed in float32 where that makes no ties, float64 inputs stay float64. Each float32 result is checked against
a float64 computation from the formulas, at the tolerances benchmarks/peers.py uses for them; what decides ties
(maxima, ASH's cut and mask, ReAct's order statistics) is checked for exact equality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tagood
from tagood.core.types import LinearHead
from tagood.detectors import ash, energy, knn, maxlogit, msp, react, vim
from tagood.detectors._common import compute_dtype, head_logits_like, logit_parts


def lse64(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def msp64(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return -(e / e.sum(axis=1, keepdims=True)).max(axis=1)


def test_compute_dtype_follows_the_input() -> None:
    assert compute_dtype(np.zeros(2, np.float32)) == torch.float32
    assert compute_dtype(np.zeros(2, np.float16)) == torch.float32
    assert compute_dtype(np.zeros(2, np.float64)) == torch.float64
    assert compute_dtype(np.zeros(2, np.int64)) == torch.float64


def test_logit_parts_float32_keeps_the_small_terms_and_ties() -> None:
    z = np.array([[20.0, 0.0, 0.0], [21.0, 0.0, 0.0], [5.0, 5.0, 0.0], [0.0, -3.0, 2.0]], np.float32)
    m, r = logit_parts(z)
    np.testing.assert_array_equal(m, [20.0, 21.0, 5.0, 2.0])
    # r: the exponential sum without the one leading 1; a second maximum counts as a 1 in r
    np.testing.assert_allclose(r, [2 * np.exp(-20.0), 2 * np.exp(-21.0), 1.0 + np.exp(-5.0),
                                   np.exp(-2.0) + np.exp(-5.0)], rtol=1e-6)
    s = msp.score(z)
    # confident rows stay distinct from -1 and from each other (float32 would round 1 + r to 1)
    assert s[0] != -1.0 and s[1] != -1.0 and s[1] < s[0]
    np.testing.assert_allclose(s[:2], msp64(z)[:2], rtol=1e-14)  # as exact as float64 near -1
    np.testing.assert_allclose(s, msp64(z), rtol=1e-7)
    assert s[2] == pytest.approx(-1.0 / (2.0 + np.exp(-5.0)), rel=1e-7)
    e = energy.score(z)
    np.testing.assert_allclose(e, -lse64(z), rtol=1e-7)
    m, r = logit_parts(z)
    np.testing.assert_allclose((m + np.log1p(r))[:2], lse64(z)[:2], rtol=1e-14)  # the parts: as exact as the maximum
    np.testing.assert_allclose(energy.score(z, temperature=0.5), -0.5 * lse64(z.astype(np.float64) / 0.5), rtol=1e-7)
    assert logit_parts(np.zeros((0, 3), np.float32))[0].shape == (0,)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_logit_detectors_float32_match_float64(dtype) -> None:
    rng = np.random.default_rng(0)
    z = (rng.normal(0, 4.0, (500, 37))).astype(dtype)
    z[7] = z[3]  # equal rows score equal
    z64 = z.astype(np.float64)
    s = tagood.create("msp").score(tagood.FeatureSet(logits=z))
    np.testing.assert_allclose(s, msp64(z64), rtol=1e-6)
    assert s[7] == s[3]
    np.testing.assert_allclose(tagood.create("energy").score(tagood.FeatureSet(logits=z)), -lse64(z64), rtol=1e-6)
    np.testing.assert_allclose(energy.score(z, temperature=3.0), -3.0 * lse64(z64 / 3.0), rtol=1e-6)
    np.testing.assert_array_equal(maxlogit.score(z), -z64.max(axis=1))
    assert maxlogit.score(z).dtype == np.float64 and msp.score(z).dtype == np.float64
    # float64 input: the float64 path, as exact as the known-answer tests want
    np.testing.assert_allclose(msp.score(z64), msp64(z64), rtol=1e-13)
    np.testing.assert_allclose(energy.score(z64), -lse64(z64), rtol=1e-13)
    np.testing.assert_array_equal(maxlogit.score(np.array([[1, 3, 2]])), [-3.0])  # integers: float64


def vim64(train: np.ndarray, head: LinearHead, d: int, q: np.ndarray) -> np.ndarray:
    x, w, b = train.astype(np.float64), head.weight.astype(np.float64), head.bias.astype(np.float64)
    u = -np.linalg.pinv(w) @ b
    val, vec = np.linalg.eigh((x - u).T @ (x - u) / len(x))
    ns = vec[:, np.argsort(val)[::-1][d:]]
    alpha = (x @ w.T + b).max(axis=1).mean() / np.linalg.norm((x - u) @ ns, axis=1).mean()
    q = q.astype(np.float64)
    return alpha * np.linalg.norm((q - u) @ ns, axis=1) - lse64(q @ w.T + b)


def features(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray, LinearHead]:
    rng = np.random.default_rng(seed)
    centres = rng.gamma(2.0, 0.5, (classes, dim))
    y = rng.integers(0, classes, n)
    x = np.maximum(centres[y] + rng.normal(0, 0.6, (n, dim)), 0).astype(np.float32)
    w = (centres - 0.9 * centres.mean(0)) / np.sqrt(dim)
    b = -(w @ x.mean(0)) + rng.normal(0, 0.1, classes)
    return x, y, LinearHead(w.astype(np.float32), b.astype(np.float32))


@pytest.mark.parametrize("far", [False, True])
def test_vim_float32_matches_float64_in_chunks_and_blocks(monkeypatch, far) -> None:
    """Several row chunks of the covariance and the projections; with ``far`` the ViM origin lies far from the data
    (a bias the head cannot reach with small logits), which the mean-centred covariance must survive."""
    monkeypatch.setattr(vim, "CHUNK", 128)
    x, y, head = features(700, 520, 6, seed=1)
    if far:
        head = LinearHead(head.weight, (head.bias + 40.0 * np.linspace(-1, 1, 6)).astype(np.float32))
    q = np.concatenate([x[:50], np.abs(np.random.default_rng(2).normal(1.0, 1.0, (50, 520)))]).astype(np.float32)
    det = tagood.create("vim[dim=64]").fit(tagood.FeatureSet(features=x, labels=y), tagood.Context(head=head))
    assert det.ns.dtype == np.float32 and det.ns.shape == (520, 456)
    want = vim64(x, head, 64, q)
    got = det.score(tagood.FeatureSet(features=q))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    u64 = -np.linalg.pinv(head.weight.astype(np.float64)) @ head.bias.astype(np.float64)
    np.testing.assert_allclose(det.u, u64, rtol=1e-12)
    cov = vim._covariance32(x, det.u)
    xc = x.astype(np.float64) - det.u
    np.testing.assert_allclose(cov, np.triu(xc.T @ xc / len(x)), rtol=1e-5, atol=1e-6 * np.abs(cov).max())
    assert not np.tril(cov, -1).any()
    # residual norms of the float32 path against float64 ones with the same subspace
    np.testing.assert_allclose(det.residual(q), np.linalg.norm((q - det.u) @ det.ns.astype(np.float64), axis=1),
                               rtol=1e-5)
    # float64 features: the float64 path
    det64 = tagood.create("vim[dim=64]").fit(tagood.FeatureSet(features=x.astype(np.float64), labels=y),
                                             tagood.Context(head=head))
    assert det64.ns.dtype == np.float64
    np.testing.assert_allclose(det64.score(q.astype(np.float64)), want, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_react_float32_clip_is_numpys_percentile_and_scores_match(dtype) -> None:
    x, y, head = features(300, 40, 4, seed=3)
    x = x.astype(dtype)
    for p in (0.5, 10.0, 50.0, 90.0, 99.0, 100.0):
        assert react.clip_value(x, p) == float(np.percentile(x.astype(np.float64), p))
    assert react.clip_value(x[:1, :1], 90.0) == float(x[0, 0])
    bad = x.astype(np.float32)
    bad[0, 0] = np.nan
    assert np.isnan(react.clip_value(bad, 90.0))
    det = tagood.create("react").fit(tagood.FeatureSet(features=x, labels=y), tagood.Context(head=head))
    c = float(np.percentile(x.astype(np.float64), 90.0))
    q = x[:60]
    want = -lse64(np.minimum(q.astype(np.float64), c) @ head.weight.astype(np.float64).T + head.bias)
    np.testing.assert_allclose(det.score(tagood.FeatureSet(features=q)), want, rtol=1e-6)
    np.testing.assert_allclose(react.score(q.astype(np.float64), head, c), want, rtol=1e-12)


@pytest.mark.parametrize("variant", ["s", "b", "p"])
def test_ash_float32_mask_exact_and_scores_match(variant) -> None:
    x, _, head = features(200, 50, 4, seed=4)
    x[:, :10] = np.round(x[:, :10])  # ties at the cut and zeros
    x[5] = 0.0  # nothing positive
    x64 = x.astype(np.float64)
    s32, s64 = ash.ash_shape_like(x, 80.0, variant), ash.ash_shape(x64, 80.0, variant)
    assert s32.dtype == np.float32 and s64.dtype == np.float64
    np.testing.assert_array_equal(s32 != 0, s64 != 0)  # the same entries kept: ties decided exactly
    np.testing.assert_allclose(s32, s64, rtol=1e-6)
    want = -lse64(s64 @ head.weight.astype(np.float64).T + head.bias)
    np.testing.assert_allclose(ash.score(x, head, 80.0, variant), want, rtol=1e-6)
    np.testing.assert_allclose(ash.score(x64, head, 80.0, variant), want, rtol=1e-12)
    np.testing.assert_allclose(head_logits_like(head, x), x64 @ head.weight.astype(np.float64).T + head.bias, rtol=1e-5,
                               atol=1e-5)


def test_knn_float32_normalisation_matches_float64() -> None:
    x, _, _ = features(400, 30, 3, seed=5)
    b32 = knn.make_bank(x, k=5)
    b64 = knn.make_bank(x.astype(np.float64), k=5)
    assert b32.dtype == np.float32 and b64.dtype == np.float32
    np.testing.assert_allclose(b32, b64, rtol=2e-7, atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(b32.astype(np.float64), axis=1), 1.0, rtol=1e-6)
    q = x[:40] * 3.0
    np.testing.assert_allclose(knn.score(q, b32, 5), knn.score(q.astype(np.float64), b64, 5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(knn.score(x[:3].astype(np.float16), b32, 1), 0.0, atol=2e-3)  # each its own neighbour


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(0, 40), cols=st.integers(1, 60),
       centre=st.sampled_from([0.0, -60.0, -75.0, -100.0, -200.0, 60.0, 87.0, 95.0, 300.0]),
       spread=st.sampled_from([0.0, 1.0, 8.0, 40.0]), specials=st.booleans())
def test_logsumexp_rows_matches_float64_and_torch(seed: int, rows: int, cols: int, centre: float, spread: float,
                                                  specials: bool) -> None:
    """The unshifted two-pass log-sum-exp against the float64 value within float32 precision, wherever the logits
    sit: in range, where exp(x) overflows (> 88) or underflows (< -87, so the sum falls below 2^-100) and the row is
    recomputed shifted, and for infinities and NaN, which give exactly what ``torch.logsumexp`` gives."""
    rng = np.random.default_rng(seed)
    z = (centre + spread * rng.standard_normal((rows, cols))).astype(np.float32)
    if specials and rows >= 4:
        z[0, 0], z[1, :], z[2, -1], z[3, 0] = np.inf, -np.inf, np.nan, -np.inf
    got = energy.logsumexp_rows(torch.from_numpy(z.copy())).numpy()
    want = torch.logsumexp(torch.from_numpy(z), dim=1).numpy()
    special = ~np.isfinite(want)
    np.testing.assert_array_equal(got[special], want[special])  # inf, -inf and NaN as torch gives them
    with np.errstate(invalid="ignore"):
        ref = lse64(z)
    fin = ~special
    # float32: the sum to a few ulps, so the log to ~1e-7 absolute, plus the rounding of the result itself
    tol = 4e-7 + 2.0**-23 * np.abs(ref[fin])
    assert np.all(np.abs(got[fin].astype(np.float64) - ref[fin]) <= tol)
    assert got.dtype == np.float32 and got.shape == (rows,)


def test_logsumexp_rows_recomputes_only_out_of_range_rows(monkeypatch) -> None:
    """Rows in range take the unshifted path (no call to torch.logsumexp at all); an out-of-range row sends only the
    out-of-range rows to it."""
    calls: list[int] = []
    real = torch.logsumexp

    def spy(x: torch.Tensor, dim: int) -> torch.Tensor:
        calls.append(len(x))
        return real(x, dim=dim)

    monkeypatch.setattr(energy.torch, "logsumexp", spy)
    z = np.random.default_rng(0).normal(0, 3, (50, 10)).astype(np.float32)
    energy.logsumexp_rows(torch.from_numpy(z))
    assert calls == []
    z[[4, 9]] += np.float32(100.0)  # exp overflows float32
    z[11] -= np.float32(150.0)  # the sum underflows
    got = energy.logsumexp_rows(torch.from_numpy(z))
    assert calls == [3]
    np.testing.assert_allclose(got.numpy(), lse64(z), rtol=1e-6)
