"""KNN's exact CPU search (tagood.detectors.knn_search): the in-place k-th largest selection against torch.topk, and
the pruned search against the brute force on data where it prunes, where it cannot, and on adversarial inputs
(ties, duplicated rows, rank-deficient banks, banks sorted by cluster)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tagood
from tagood.detectors import knn, knn_search
from tagood.detectors.knn_search import MARGIN, PrunedBank, kth_largest, kth_largest_products


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng: np.random.Generator, n: int, dim: int, clusters: int, spread: float,
               centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    c = rng.normal(size=(clusters, dim)) if centres is None else centres
    y = rng.integers(0, len(c), n)
    return _unit(c[y] + spread * rng.normal(size=(n, dim))), y


def _kth64(q: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Reference: the k-th largest float64 inner product."""
    return np.sort(q.astype(np.float64) @ bank.astype(np.float64).T, axis=1)[:, -k]


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 300), cols=st.integers(1, 80), data=st.data(), threads=st.sampled_from([1, 2, 3]),
       levels=st.integers(2, 1000))
def test_kth_largest_equals_torch_topk(rows: int, cols: int, data: st.DataObject, threads: int, levels: int) -> None:
    k = data.draw(st.integers(1, cols))
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    a = (rng.integers(0, levels, (rows, cols)) / levels).astype(np.float32)  # few levels: many ties
    if rows > 2 and cols > 1:
        a[0, 0], a[1, -1], a[2, 0] = np.nan, np.inf, -np.inf
    want = torch.topk(torch.from_numpy(a.copy()), k, dim=1).values[:, -1].numpy()
    got = kth_largest(a, k, threads=threads)
    np.testing.assert_array_equal(got, want)
    # afterwards each row's k largest sit at its end
    if rows > 2:
        np.testing.assert_array_equal(np.sort(a[3:, -k:], axis=1), np.sort(np.sort(a[3:], axis=1)[:, -k:], axis=1))


def test_kth_largest_rejects_a_rank_outside_the_row() -> None:
    with pytest.raises(ValueError, match="k=6 must be in"):
        kth_largest(np.zeros((3, 5), np.float32), 6)
    with pytest.raises(ValueError, match="k=0"):
        kth_largest(np.zeros((3, 5), np.float32), 0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.integers(200, 1200), d=st.sampled_from([32, 48, 64]),
       clusters=st.integers(1, 12), spread=st.sampled_from([0.05, 0.2, 0.6, 3.0]), stride=st.integers(2, 5),
       sort_bank=st.booleans(), rank=st.sampled_from([None, 3, 6]), data=st.data())
def test_pruned_search_equals_the_brute_force(seed: int, m: int, d: int, clusters: int, spread: float, stride: int,
                                              sort_bank: bool, rank: int | None, data: st.DataObject) -> None:
    """On clustered banks (tight to diffuse, in random or cluster order, of full or low rank), with queries near
    the clusters, on bank rows (exact ties), duplicated and far from everything: the pruned search's k-th largest
    product equals the float64 reference within float32 rounding, for every k the pilot allows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    if rank is not None:  # every row inside a rank-`rank` subspace: residual norms near zero
        centres = centres[:, :rank] @ rng.normal(size=(rank, d))
    bank, y = _clustered(rng, m, d, clusters, spread, centres)
    if rank is not None:
        basis = np.linalg.qr(centres.T)[0]
        bank = _unit(bank @ basis @ basis.T)
    bank[: m // 10] = bank[m // 10 : 2 * (m // 10)]  # duplicated rows
    if sort_bank:
        bank = bank[np.argsort(y[: len(bank)], kind="stable")]
    pilot = -(-m // stride)
    k = data.draw(st.integers(1, max(1, pilot // 2)))
    pb = PrunedBank.build(bank, k, stride=stride, dim=8, min_rows=0)
    assert pb is not None
    near, _ = _clustered(rng, 60, d, clusters, spread, centres)
    far = _unit(rng.normal(size=(20, d)))
    queries = np.concatenate([near, bank[:15], bank[m // 2 : m // 2 + 5], far])
    rows = data.draw(st.sampled_from([7, 64, 200]))
    got = np.concatenate(list(kth_largest_products(queries, bank, k, rows, pb)))
    brute = np.concatenate(list(kth_largest_products(queries, bank, k, rows)))
    np.testing.assert_allclose(got, _kth64(queries, bank, k), rtol=0, atol=2e-6)
    np.testing.assert_allclose(got, brute, rtol=0, atol=2e-6)


def test_the_bound_never_falls_below_the_product() -> None:
    """``[B'q, r(q)] . [B'z, r(z)]`` bounds ``q.z`` from above (Cauchy-Schwarz on the residuals), for a full-rank
    bank and for one inside a low-rank subspace (residual norms near zero), with float32 rounding under MARGIN."""
    rng = np.random.default_rng(0)
    for bank in (_unit(rng.normal(size=(600, 40))), _unit(rng.normal(size=(600, 4)) @ rng.normal(size=(4, 40)))):
        pb = PrunedBank.build(bank, 5, stride=3, dim=8, min_rows=0)
        assert pb is not None
        q = np.concatenate([_unit(rng.normal(size=(50, 40))), bank[:50]])
        bound = pb.query_bound(q).astype(np.float64) @ pb.rest_bound.astype(np.float64).T
        exact = q.astype(np.float64) @ bank[pb.rest_rows].astype(np.float64).T
        assert (bound - exact).min() > -MARGIN / 100
        assert pb.rest_bound[:, -1].min() > 0  # rounded up, never zero


def test_pruning_skips_products_of_clustered_queries_and_not_of_far_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries inside tight clusters take the sparse path (few exact products), queries far from every row the
    dense one; a block where most queries are dense sends the rest of the call to the brute force."""
    rng = np.random.default_rng(1)
    bank, _ = _clustered(rng, 2000, 64, 20, 0.1)
    pb = PrunedBank.build(bank, 10, dim=8, min_rows=0)
    assert pb is not None
    near = _unit(bank[:300] + 0.01 * _unit(rng.normal(size=(300, 64))))
    block = np.empty((300, len(bank)), np.float32)
    seen: list[int] = []
    orig = knn_search._pruned_block

    def spy(*a: object, **kw: object) -> tuple[np.ndarray, int]:
        out, n_dense = orig(*a, **kw)  # type: ignore[arg-type]
        seen.append(n_dense)
        return out, n_dense

    _, n_dense = orig(near, bank, pb, 10, block)
    assert n_dense == 0
    far = _unit(rng.normal(size=(300, 64)) * 0.01 + 1.0)  # all alike, far from the clusters
    _, n_dense = orig(far, bank, pb, 10, block)
    assert n_dense == 300
    monkeypatch.setattr(knn_search, "_pruned_block", spy)
    got = np.concatenate(list(kth_largest_products(np.concatenate([far, near]), bank, 10, 300, pb)))
    assert seen == [300]  # the second block went to the brute force
    np.testing.assert_allclose(got, _kth64(np.concatenate([far, near]), bank, 10), atol=2e-6)


def test_build_declines_where_pruning_cannot_pay() -> None:
    rng = np.random.default_rng(2)
    assert PrunedBank.build(_unit(rng.normal(size=(5000, 256))), 10) is None  # D < 4 * 128
    assert PrunedBank.build(_unit(rng.normal(size=(1000, 512))), 10) is None  # fewer than 4,096 rows
    assert PrunedBank.build(_unit(rng.normal(size=(4096, 512))), 600) is None  # 1,024 pilot rows < 2k
    pb = PrunedBank.build(_unit(rng.normal(size=(4096, 512))), 50)
    assert pb is not None and pb.margin == MARGIN
    wide = PrunedBank(4, np.zeros((8192, 8), np.float32), pb.rest_rows, pb.rest_bound)
    assert wide.margin == 2 * MARGIN  # float32 rounding grows with the product's length


def test_knn_detector_prunes_on_the_cpu_and_scores_as_the_brute_force(caplog: pytest.LogCaptureFixture) -> None:
    """The detector builds the pruning data once per bank and scores exactly as the brute-force functional path."""
    rng = np.random.default_rng(3)
    train, _ = _clustered(rng, 4200, 512, 30, 0.3)
    test = np.concatenate([_clustered(rng, 150, 512, 30, 0.3)[0], _unit(rng.normal(size=(50, 512)))])
    det = tagood.create("knn", k=20).fit(tagood.FeatureSet(features=train))
    with caplog.at_level(logging.DEBUG, logger="tagood.detectors.knn_search"):
        got = det.score(tagood.FeatureSet(features=test))
    assert det._pruned is not None and det._pruned[1] is not None
    first = det._pruned[1]
    det.score(tagood.FeatureSet(features=test[:5]))
    assert det._pruned[1] is first  # built once per bank
    np.testing.assert_allclose(got, knn.score(test, det.bank, k=20), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got, np.sqrt(np.maximum(2 - 2 * _kth64(_unit(test), det.bank, 20), 0)), atol=1e-5)
