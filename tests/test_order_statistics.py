"""ReAct's exact order statistics (a sampled bracket, then a partition of what falls inside it) against
``np.partition``, and ASH's shaping split over threads against the same shaping in one piece."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tagood.detectors import ash, react


@settings(max_examples=80, deadline=None)
@given(n=st.integers(2, 6000), seed=st.integers(0, 2**31 - 1), q=st.floats(0.0, 1.0), levels=st.sampled_from([3, 50, 0]),
       dtype=st.sampled_from([np.float32, np.float16]), sample=st.sampled_from([16, 64, 256]))
def test_order_statistics_equal_np_partition(n: int, seed: int, q: float, levels: int, dtype: type,
                                             sample: int) -> None:
    """Any rank pair, with heavy ties (3 levels), few ties or none, infinities, and samples small enough that
    the bracket path runs (n > 4 * sample) and sometimes misses (then the whole array is partitioned)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n) if levels == 0 else rng.integers(0, levels, n).astype(np.float64)
    x = x.astype(dtype)
    if n > 10:
        x[3], x[7] = np.inf, -np.inf
    lo = int(q * (n - 1))
    hi = min(lo + 1, n - 1)
    part = np.partition(x, [lo, hi] if hi != lo else [lo])
    assert react.order_statistics(x, lo, hi, sample=sample) == (float(part[lo]), float(part[hi]))


def test_clip_value_equals_np_percentile_on_a_large_array() -> None:
    """At a size where the sampled bracket is used (over 4 * 2^20 values), the clip equals ``np.percentile`` of
    the float64 copy, for percentiles near the ends and in the middle."""
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(0.5, 1.0, size=(3000, 1500)), 0).astype(np.float32)  # 4.5M values, 30% zeros
    for p in (0.0, 10.0, 50.0, 90.0, 99.9, 100.0):
        assert react.clip_value(x, p) == float(np.percentile(x.astype(np.float64), p))


def test_ash_shaping_split_over_threads_is_bit_identical() -> None:
    rng = np.random.default_rng(1)
    x = np.maximum(rng.normal(size=(1500, 96)), 0).astype(np.float32)
    x[::7, :40] = 1.0  # ties at the cut
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for variant in ("s", "b", "p"):
            for p in (0.0, 65.0, 90.0):
                got = ash.ash_shape_like(x, p, variant)
                want = np.empty_like(x)
                n_keep = min(96, max(1, 96 - int(np.round(96 * p / 100.0))))
                ash._shape_rows(x, want, 96 - n_keep, variant)
                assert got.dtype == np.float32
                np.testing.assert_array_equal(got, want)
    finally:
        torch.set_num_threads(threads)


def test_order_statistics_fall_back_when_the_sample_misleads() -> None:
    """Every sampled position holds an outlier, so the bracket misses the ranks: the whole array is partitioned
    and the answer is still exact."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=6400).astype(np.float32)
    x[::100] = 1000.0  # the strided sample (step 6400 // 64 = 100) sees only these
    for lo in (0, 3199, 6000, 6399):
        hi = min(lo + 1, 6399)
        part = np.partition(x, [lo, hi] if hi != lo else [lo])
        assert react.order_statistics(x, lo, hi, sample=64) == (float(part[lo]), float(part[hi]))
