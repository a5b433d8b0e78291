"""ViM (Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022).

A virtual logit from the norm of a feature's residual outside the principal subspace of the IND training features
(centred at the origin ``u = -pinv(W) b`` of the IND head), matched to the real logits by ``alpha`` = mean max-logit
/ mean residual norm on IND train: ``score(x) = alpha * ||(x - u) R|| - logsumexp(W x + b)``, **higher = more OOD**.

Precision: float64 features are fitted and scored in float64 throughout (numpy). float32 / float16 features -- what
backbones and the cache produce -- take the float32 path (torch, its thread pool, in row chunks so no copy of the
whole split is made): the covariance is the upper triangle of ``X^T X`` of the mean-centred features (BLAS
``ssyrk``: half a full product's work), summed over chunks in float64, with the mean's offset from ``u``
added in float64; its eigendecomposition is float64 (an origin far from the data makes one eigenvalue dominate,
which float32 would let swamp the residual directions); the residual projection and the logits are float32, one
product per chunk for both, the residual's constant ``u R`` subtracted after the product; the log-sum-exp keeps
its maximum exact
(:func:`tagood.detectors._common.logit_parts`). ViM's scores are continuous (no saturation), so float32 makes no
ties; they match the float64 computation to about 1e-5 relative (``benchmarks/peers.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import scipy.linalg as scipy_linalg  # type: ignore[import-untyped]  # scipy: required by scikit-learn
import torch
from numpy.typing import ArrayLike
from pydantic import Field

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.numeric import logsumexp
from tagood.core.types import LinearHead
from tagood.core.validation import PosInt
from tagood.detectors._common import HeadDetector, as_tensor, compute_dtype, head_logits, logit_parts, row_products
from tagood.detectors.base import field_array
from tagood.detectors.options import DetectorOptions
from tagood.detectors.registry import register

PAPER = "Wang, Li, Feng & Zhang, ViM: Out-Of-Distribution with Virtual-logit Matching, CVPR 2022"


def default_dim(feature_dim: int) -> int:
    """Principal-subspace dimension D as in the paper's code: 1000 if N >= 2048, 512 if N >= 768, else N / 2."""
    if feature_dim >= 2048:
        return 1000
    if feature_dim >= 768:
        return 512
    return feature_dim // 2


#: Rows per chunk of the float32 path (a 16384 x 1280 float32 chunk is 84 MB).
CHUNK = 16384


def _covariance32(x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``(X - u)^T (X - u) / N``, upper triangle only (the lower one is left zero), float64 ``(D, D)``.

    Accurate for an origin ``u`` far from the data: the float32 products are of the features centred at their
    float64 mean ``mu`` (BLAS ``ssyrk``, the upper triangle only, per chunk of ``CHUNK`` rows, summed in float64),
    and the mean's offset from the origin is added in float64: ``(X - mu)^T (X - mu) / N + (mu - u)(mu - u)^T``."""
    n, dim = x.shape
    mu = np.zeros(dim)
    for i in range(0, n, CHUNK):
        mu += np.asarray(x[i : i + CHUNK]).sum(axis=0, dtype=np.float64)
    mu /= max(n, 1)
    mu32 = torch.from_numpy(mu.astype(np.float32))
    acc = np.zeros((dim, dim))
    buf = torch.empty(min(CHUNK, n), dim, dtype=torch.float32)  # one centred chunk, reused
    for i in range(0, n, CHUNK):
        xc = torch.sub(as_tensor(x[i : i + CHUNK], torch.float32), mu32, out=buf[: min(CHUNK, n - i)]).numpy()
        # BLAS ssyrk on the Fortran-ordered transpose (no copy): the upper triangle of xc^T xc, half a product's work;
        # its strict lower triangle is returned zero
        acc += scipy_linalg.blas.ssyrk(1.0, xc.T, trans=0, lower=0)
    off = mu - u
    return np.triu(acc / max(n, 1) + np.outer(off, off))


def _fit_subspace32(x: np.ndarray, head: LinearHead, dim: int | None) -> tuple[np.ndarray, np.ndarray, float, int]:
    """:func:`fit_subspace` on float32 / float16 features: ``u`` float64, ``R`` float32 (see the module's precision
    note)."""
    w, b = head.weight.astype(np.float64), head.bias.astype(np.float64)
    u = -np.linalg.pinv(w) @ b
    d = dim if dim is not None else default_dim(x.shape[1])
    d = min(d, x.shape[1] - 1)
    # float64 LAPACK (divide and conquer) on the upper triangle; ascending: the first D - d span the residual space
    _, eigvec = scipy_linalg.eigh(_covariance32(x, u), lower=False, driver="evd", check_finite=False)
    ns = np.ascontiguousarray(eigvec[:, : x.shape[1] - d], dtype=np.float32)
    res, top = _project32(x, head, u, ns, reduce_logits="max")  # per chunk: no (N, C) logits held whole
    alpha = float(top.mean() / max(res.mean(), 1e-12))
    return u, ns, alpha, d


def _project32(x: np.ndarray, head: LinearHead, u: np.ndarray, ns: np.ndarray,
               reduce_logits: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Residual norms ``||(x - u) R||`` (float64 ``(N,)``) and the IND logits ``W x + b`` (float32 ``(N, C)``; with
    ``reduce_logits="lse"``: their log-sum-exp, float64 ``(N,)``; ``"max"``: their maximum, float32 ``(N,)``, each
    reduced chunk by chunk so the ``(N, C)`` logits are never held whole), from one float32 product per chunk of rows,
    ``x [R | W^T]``: the residual is ``x R - u R`` (``u R`` in float64), the logits ``x W^T + b``."""
    k = ns.shape[1]
    w32 = torch.from_numpy(np.ascontiguousarray(head.weight, dtype=np.float32))
    m = torch.cat([torch.from_numpy(np.ascontiguousarray(ns, dtype=np.float32)), w32.T], dim=1)
    ur = torch.from_numpy((u @ ns.astype(np.float64)).astype(np.float32))
    b32 = torch.from_numpy(np.ascontiguousarray(head.bias, dtype=np.float32))
    res, lg = [], []
    for _, p in row_products(x, m.numpy(), CHUNK):
        res.append(torch.linalg.vector_norm(p[:, :k].sub_(ur), dim=1).double().numpy())
        logits = p[:, k:].add_(b32).numpy()
        if reduce_logits == "lse":
            mx, r = logit_parts(logits)
            lg.append(mx + np.log1p(r))
        elif reduce_logits == "max":
            lg.append(logits.max(axis=1))
        else:
            lg.append(logits.copy())  # the block is reused by the next chunk
    if not res:
        return np.zeros(0), (np.zeros(0, np.float32 if reduce_logits == "max" else np.float64) if reduce_logits
                             else np.zeros((0, len(head.bias)), np.float32))
    return np.concatenate(res), np.concatenate(lg)


def fit_subspace(train_features: ArrayLike, head: LinearHead,
                 dim: int | None = None) -> tuple[np.ndarray, np.ndarray, float, int]:
    """ViM's fitted quantities from IND training features ``(N, D)``: the origin ``u (D,)``, the residual space
    ``R (D, D - d)`` (eigenvectors of the centred covariance beyond the ``d`` largest), ``alpha`` and ``d``
    (``dim``, default :func:`default_dim`, at most ``D - 1``). float64 features: all in float64; float32 / float16
    features: the float32 path of the module's precision note (``u`` float64, ``R`` float32)."""
    x = np.asarray(train_features)
    if compute_dtype(x) == torch.float32:
        return _fit_subspace32(x, head, dim)
    x = np.asarray(x, dtype=np.float64)
    w, b = head.weight.astype(np.float64), head.bias.astype(np.float64)
    u = -np.linalg.pinv(w) @ b
    xc = x - u
    d = dim if dim is not None else default_dim(x.shape[1])
    d = min(d, x.shape[1] - 1)
    cov = xc.T @ xc / len(xc)
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    order = np.argsort(eigval)[::-1]
    ns = np.ascontiguousarray(eigvec[:, order[d:]])  # the residual (null) space
    vlogit = np.linalg.norm(xc @ ns, axis=1)
    top = np.concatenate([head_logits(head, x[i : i + CHUNK]).max(axis=1) for i in range(0, len(x), CHUNK)])
    alpha = float(top.mean() / max(vlogit.mean(), 1e-12))
    return u, ns, alpha, d


def residual(features: ArrayLike, u: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """The norm of each feature's residual ``||(x - u) R||``, float64 ``(N,)`` (float32 features: computed in
    float32, see the module's precision note)."""
    x = np.asarray(features)
    if compute_dtype(x) == torch.float32:
        w = np.zeros((0, len(u)))
        return _project32(x, LinearHead(w, np.zeros(0)), u, ns)[0]
    return np.linalg.norm((np.asarray(x, dtype=np.float64) - u) @ ns, axis=1)


def score(features: ArrayLike, head: LinearHead, u: np.ndarray, ns: np.ndarray, alpha: float) -> np.ndarray:
    """ViM OOD score ``alpha * ||(x - u) R|| - logsumexp(W x + b)``, **higher = more OOD**.

    Args:
        features: ``(N, D)`` penultimate features.
        head: the IND linear head.
        u, ns, alpha: the origin, residual space and matching factor (:func:`fit_subspace`).
    Returns:
        ``(N,)`` float64 scores; float32 / float16 features are scored in float32 (the module's precision note).
    """
    x = np.asarray(features)
    if compute_dtype(x) == torch.float32:
        res, lse = _project32(x, head, u, ns, reduce_logits="lse")
        return alpha * res - lse
    x = np.asarray(x, dtype=np.float64)
    return alpha * residual(x, u, ns) - logsumexp(head_logits(head, x))


@register("vim")
class ViM(HeadDetector):
    """Virtual-logit matching: residual norm outside the principal subspace of IND training features, scaled to the
    logits, minus the log-sum-exp of the IND head's logits. Score = ``alpha ||x_perp|| - logsumexp(logits)``
    (higher = more OOD). See :func:`score`."""

    class Options(DetectorOptions):
        dim: PosInt | None = Field(None, description="principal-subspace dimension; none: the paper's rule (1000 for "
                                                     "features of 2048+ dims, 512 for 768+, else half)")

    options: Options
    paper: ClassVar[str] = PAPER
    u: np.ndarray
    ns: np.ndarray
    alpha: float
    d: int

    def _fit(self, train: FeatureSet, context: Context) -> None:
        super()._fit(train, context)
        self.u, self.ns, self.alpha, self.d = fit_subspace(field_array(train, "features"), self.head, self.options.dim)

    def residual(self, features: ArrayLike) -> np.ndarray:
        """The norm of each feature's residual outside the fitted principal subspace."""
        return residual(features, self.u, self.ns)

    def _score(self, data: FeatureSet) -> np.ndarray:
        return score(field_array(data, "features"), self.head, self.u, self.ns, self.alpha)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super()._state()
        return {**arrays, "u": self.u, "ns": self.ns}, {**meta, "alpha": self.alpha, "d": self.d}

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        super()._set_state(arrays, meta)
        self.u, self.ns = arrays["u"], arrays["ns"]
        self.alpha, self.d = float(meta["alpha"]), int(meta["d"])
