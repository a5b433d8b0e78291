"""Exact k-th nearest neighbour search for KNN (Sun et al., ICML 2022) on the CPU: the k-th largest inner product
of each L2-normalised query with the rows of an L2-normalised bank, computed exactly (float32 products), with a
pruning stage that skips most of the products of a query that has a tight neighbourhood.

The pruned search (:func:`kth_largest_products` with a :class:`PrunedBank`) is exact, not approximate:

1. **Pilot.** Every ``stride``-th bank row (a view, no copy) is scored exactly. The k-th largest pilot product
   ``L`` is a lower bound of the query's k-th largest product over the whole bank.
2. **Bounds.** The other rows are scored through a ``d``-dimensional orthonormal basis ``B`` of the bank's main
   subspace (a randomized range finder on the pilot rows): by Cauchy-Schwarz,
   ``q.z <= (B'q).(B'z) + ||q - BB'q|| ||z - BB'z||``, one product of width ``d + 1``. A row whose bound is below
   ``L`` cannot be among the k nearest and is skipped; a small margin (:data:`MARGIN`) covers float32 rounding.
3. **Exact rest.** The survivors are scored exactly, grouped so that queries with the same neighbourhood share one
   product. A query whose survivors are more than :data:`DENSE_FRACTION` of the rows is scored against every row.

The result is the k-th largest of exact float32 products, as the brute-force search's; only the summation order
of a product can differ (float32 rounding, ~1e-7). What pruning saves depends on the data: a query near a cluster
of more than ``k`` bank rows keeps about that cluster; a query far from every row (typically an OOD one) keeps
every row and costs the pilot and the bound product more than the brute force (about ``1/stride + (d + 1) / D``).
The search therefore returns to the brute force for the rest of a call once most queries of a block kept most rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tagood.detectors._common import map_row_blocks, row_products

log = logging.getLogger(__name__)

#: bound slack at D <= 4096 (float32 rounding of the products and of the basis stays below 1e-4 for unit vectors
#: there); wider banks get ``MARGIN * D / 4096`` (:attr:`PrunedBank.margin`)
MARGIN = 1e-3
#: a query whose surviving rows exceed this fraction of the non-pilot rows is scored against all of them
DENSE_FRACTION = 0.25
#: queries of one group share one exact product over the union of their surviving rows
GROUP = 64


def kth_largest(block: np.ndarray, k: int, threads: int | None = None) -> np.ndarray:
    """The ``k``-th largest value of each row of ``block`` (``1 <= k <= block.shape[1]``), equal to
    ``torch.topk(block, k, dim=1).values[:, -1]``. It **reorders each row of** ``block`` **in place** (a partial
    selection, ``ndarray.partition``: linear time, no copy; afterwards ``block[:, m - k:]`` holds each row's ``k``
    largest), its rows split over ``threads`` threads (default torch's intra-op thread count; numpy releases the
    interpreter lock while it selects). NaN counts as the largest value, as in ``torch.topk``.

    Returns:
        ``(rows,)`` array of ``block``'s dtype (a copy).
    """
    n, m = block.shape
    if not 1 <= k <= m:
        raise ValueError(f"k={k} must be in [1, {m}] (the row length)")
    at = m - k
    map_row_blocks(lambda i, j: block[i:j].partition(at, axis=1), n, threads, min_rows=64)
    return block[:, at].copy()


def _residual_norms(x: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """``||x - B B'x||`` per row from ``||x||^2 - ||B'x||^2`` (float64 sums), rounded up: ``1e-5`` added under the
    root covers the float32 error of both terms, so the result never falls below the true norm."""
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64) - np.einsum("ij,ij->i", proj, proj, dtype=np.float64)
    return np.sqrt(np.maximum(sq, 0.0) + 1e-5)


@dataclass(frozen=True)
class PrunedBank:
    """What the pruned search adds to a bank: the pilot ``stride``, the orthonormal ``basis`` ``(D, d)`` and, for
    the non-pilot rows in the order of :attr:`rest_rows`, their coordinates in the basis with their residual norm
    appended (``(M - P, d + 1)`` float32). Built by :meth:`build`; not part of a detector's saved state."""

    stride: int
    basis: np.ndarray
    rest_rows: np.ndarray
    rest_bound: np.ndarray

    @property
    def margin(self) -> float:
        """The bound's slack: :data:`MARGIN`, grown in proportion to ``D`` above 4,096 dimensions (the rounding
        error of a float32 product grows with its length)."""
        return MARGIN * max(1.0, self.basis.shape[0] / 4096)

    @staticmethod
    def build(bank: np.ndarray, k: int, stride: int = 4, dim: int = 128, seed: int = 0,
              min_rows: int = 4096) -> PrunedBank | None:
        """The pruning data of ``bank``, or None where pruning cannot pay: fewer than ``min_rows`` rows, fewer
        than ``2k`` pilot rows, or ``D < 4 * dim`` (narrow products are cheap anyway).

        Args:
            bank: ``(M, D)`` L2-normalised float32 rows.
            k: the neighbour rank the search will use.
            stride: every ``stride``-th row is a pilot row (scored exactly first).
            dim: the basis width ``d``.
            seed: seeds the range finder (any basis keeps the search exact).
            min_rows: below this many rows the brute force is used.
        """
        m, d_in = bank.shape
        if m < min_rows or d_in < 4 * dim or -(-m // stride) < 2 * k:
            return None
        rng = np.random.default_rng(seed)
        sample = np.asarray(bank[::stride][:8192], dtype=np.float32)
        # randomized range finder with two power iterations: any orthonormal basis keeps the bound exact; a basis
        # of the main subspace keeps it tight
        y = sample.T @ (sample @ rng.standard_normal((d_in, dim + 16), dtype=np.float32))
        for _ in range(2):
            y = sample.T @ (sample @ np.linalg.qr(y)[0])
        basis = np.ascontiguousarray(np.linalg.qr(y.astype(np.float64))[0][:, :dim], dtype=np.float32)
        rest_rows = np.concatenate([np.arange(v, m, stride) for v in range(1, stride)])
        bound = np.empty((len(rest_rows), dim + 1), dtype=np.float32)
        at = 0
        for v in range(1, stride):  # per strided view of the bank: no copy of the bank
            view = bank[v::stride]
            proj = bound[at:at + len(view), :dim]
            np.matmul(view, basis, out=proj)
            bound[at:at + len(view), dim] = _residual_norms(view, proj)
            at += len(view)
        return PrunedBank(stride, basis, rest_rows, bound)

    def query_bound(self, q: np.ndarray) -> np.ndarray:
        """The queries' side of the bound product: ``[B'q, ||q - BB'q||]`` ``(n, d + 1)`` float32."""
        proj = q @ self.basis
        out = np.empty((len(q), proj.shape[1] + 1), dtype=np.float32)
        out[:, :-1] = proj
        out[:, -1] = _residual_norms(q, proj)
        return out


def _dense_rest(q: np.ndarray, bank: np.ndarray, stride: int, out: np.ndarray) -> None:
    """Exact products of ``q`` with the non-pilot rows of ``bank``, in :attr:`PrunedBank.rest_rows` order, into
    ``out`` (one product per strided view of the bank: no copy of the bank)."""
    at = 0
    for v in range(1, stride):
        view = bank[v::stride]
        np.matmul(q, view.T, out=out[:, at:at + len(view)])
        at += len(view)


def _pruned_block(q: np.ndarray, bank: np.ndarray, pb: PrunedBank, k: int, block: np.ndarray) -> tuple[np.ndarray, int]:
    """The k-th largest product of each query of ``q`` with ``bank`` by the pruned search (module docstring),
    working in ``block`` ``(n, M)``; also how many of the queries were scored against every row."""
    n = len(q)
    pilot = bank[::pb.stride]
    p = len(pilot)
    np.matmul(q, pilot.T, out=block[:, :p])
    lower = kth_largest(block[:, :p], k) - pb.margin  # the partition leaves each row's k largest in block[:, p - k:p]
    top = block[:, p - k:p].copy()
    qb = pb.query_bound(q)
    # which queries keep most rows, judged on every 8th non-pilot row: those are scored against every row (the
    # choice only decides the cost; either way the result is exact)
    est = (qb @ pb.rest_bound[::8].T >= lower[:, None]).mean(1)
    dense, sparse = np.flatnonzero(est > DENSE_FRACTION), np.flatnonzero(est <= DENSE_FRACTION)
    out = np.empty(n, dtype=np.float32)
    if len(dense):
        rows = block[:len(dense)]
        rows[:, p - k:p] = top[dense]
        _dense_rest(q[dense], bank, pb.stride, rows[:, p:])
        out[dense] = kth_largest(rows[:, p - k:], k)
    if len(sparse):
        bound = block[:len(sparse), p:]
        np.matmul(qb[sparse], pb.rest_bound.T, out=bound)
        keep = (torch.from_numpy(bound) >= torch.from_numpy(lower[sparse])[:, None]).numpy()
        # queries with the same first surviving row side by side: their surviving sets tend to coincide
        order = np.argsort(keep.argmax(1), kind="stable")
        for i in range(0, len(order), GROUP):
            g = order[i:i + GROUP]
            cols = np.flatnonzero(keep[g].any(0))
            vals = np.empty((len(g), k + len(cols)), dtype=np.float32)
            vals[:, :k] = top[sparse[g]]
            if len(cols):
                np.matmul(q[sparse[g]], bank[pb.rest_rows[cols]].T, out=vals[:, k:])
            out[sparse[g]] = kth_largest(vals, k, threads=1)
    return out, len(dense)


def kth_largest_products(queries: np.ndarray, bank: np.ndarray, k: int, rows: int,
                         pruned: PrunedBank | None = None) -> Iterator[np.ndarray]:
    """The k-th largest inner product of each query with the rows of ``bank`` (float32), per block of ``rows``
    queries, on the CPU through numpy's BLAS: by the pruned search when ``pruned`` is given (module docstring),
    until most queries of a block keep most rows, else by the brute force (every product, then
    :func:`kth_largest`).

    Args:
        queries: ``(N, D)`` L2-normalised queries (any float dtype; converted to float32 per block).
        bank: ``(M, D)`` L2-normalised float32 rows, ``M >= k``.
        k: the rank.
        rows: queries per block (memory: ``rows * M`` float32).
        pruned: :meth:`PrunedBank.build` of ``bank``, or None.
    """
    done = 0
    if pruned is not None:
        block = np.empty((min(rows, len(queries)), len(bank)), dtype=np.float32)
        for done in range(0, len(queries), rows):
            q = np.ascontiguousarray(queries[done:done + rows], dtype=np.float32)
            kth, n_dense = _pruned_block(q, bank, pruned, k, block[:len(q)])
            yield kth
            if n_dense > 0.75 * len(q):
                log.debug("knn: %d of %d queries kept most rows; brute force for the rest of the call", n_dense, len(q))
                done += len(q)
                break
        else:
            return
        del block
    for _, sims in row_products(queries[done:], bank.T, rows):
        yield kth_largest(sims.numpy(), k)
