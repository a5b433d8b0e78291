"""tagood.core.numeric against scipy.special / numpy.linalg references (hypothesis property tests)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tagood.core.numeric import l2_normalize, log_softmax, logsumexp, softmax

finite = st.floats(min_value=-300.0, max_value=300.0, allow_nan=False, allow_infinity=False)
matrices = arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 9)), elements=finite)
temps = st.floats(min_value=0.05, max_value=20.0)


@settings(max_examples=150, deadline=None)
@given(z=matrices, t=temps, axis=st.sampled_from([0, 1, -1]))
def test_softmax_matches_scipy(z: np.ndarray, t: float, axis: int) -> None:
    got = softmax(z, axis=axis, temperature=t)
    want = scipy.special.softmax(z / t, axis=axis)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(got.sum(axis=axis), 1.0, rtol=1e-12)


@settings(max_examples=150, deadline=None)
@given(z=matrices, t=temps, axis=st.sampled_from([0, 1, -1]))
def test_log_softmax_and_logsumexp_match_scipy(z: np.ndarray, t: float, axis: int) -> None:
    np.testing.assert_allclose(log_softmax(z, axis=axis, temperature=t),
                               scipy.special.log_softmax(z / t, axis=axis), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(logsumexp(z, axis=axis, temperature=t),
                               t * scipy.special.logsumexp(z / t, axis=axis), rtol=1e-11, atol=1e-9)


def test_stable_at_extremes() -> None:
    z = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]])
    p = softmax(z)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(p[1], [1 / 3] * 3)
    np.testing.assert_allclose(logsumexp(z), [1e4, -1e4 + np.log(3.0)])


def test_dtype_is_kept_when_asked() -> None:
    z = np.random.default_rng(0).normal(size=(4, 7)).astype(np.float32)
    assert softmax(z, dtype=np.float32).dtype == np.float32
    assert softmax(z).dtype == np.float64
    assert l2_normalize(z, dtype=np.float32).dtype == np.float32
    with pytest.raises(ValueError, match="temperature"):
        softmax(z, temperature=0.0)


@settings(max_examples=150, deadline=None)
@given(x=arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 9)),
                elements=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)),
       axis=st.sampled_from([0, 1, -1]))
def test_l2_normalize_matches_numpy(x: np.ndarray, axis: int) -> None:
    got = l2_normalize(x, axis=axis)
    norms = np.linalg.norm(x, axis=axis, keepdims=True)
    big = np.broadcast_to(norms > 1e-12, x.shape)
    want = x / np.where(norms > 1e-12, norms, 1.0)
    np.testing.assert_allclose(got[big], want[big], rtol=1e-12)
    out_norms = np.linalg.norm(got, axis=axis)
    ok = np.squeeze(norms, axis=axis) > 1e-12
    np.testing.assert_allclose(out_norms[ok], 1.0, rtol=1e-12)
    np.testing.assert_array_equal(got[~big], x[~big] / 1e-12)  # tiny vectors are divided by eps, zeros stay zero
