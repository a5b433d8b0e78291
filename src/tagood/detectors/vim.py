"""ViM (Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022).

A virtual logit from the norm of a feature's residual outside the principal subspace of the IND training features
(centred at the origin ``u = -pinv(W) b`` of the IND head), matched to the real logits by ``alpha`` = mean max-logit
/ mean residual norm on IND train: ``score(x) = alpha * ||(x - u) R|| - logsumexp(W x + b)``, **higher = more OOD**.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike
from pydantic import Field

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.numeric import logsumexp
from tagood.core.types import LinearHead
from tagood.core.validation import PosInt
from tagood.detectors._common import HeadDetector, head_logits
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


def fit_subspace(train_features: ArrayLike, head: LinearHead,
                 dim: int | None = None) -> tuple[np.ndarray, np.ndarray, float, int]:
    """ViM's fitted quantities from IND training features ``(N, D)``: the origin ``u (D,)``, the residual space
    ``R (D, D - d)`` (eigenvectors of the centred covariance beyond the ``d`` largest), ``alpha`` and ``d``
    (``dim``, default :func:`default_dim`, at most ``D - 1``), all float64."""
    x = np.asarray(train_features, dtype=np.float64)
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
    alpha = float(head_logits(head, x).max(axis=1).mean() / max(vlogit.mean(), 1e-12))
    return u, ns, alpha, d


def residual(features: ArrayLike, u: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """The norm of each feature's residual ``||(x - u) R||``, float64 ``(N,)``."""
    return np.linalg.norm((np.asarray(features, dtype=np.float64) - u) @ ns, axis=1)


def score(features: ArrayLike, head: LinearHead, u: np.ndarray, ns: np.ndarray, alpha: float) -> np.ndarray:
    """ViM OOD score ``alpha * ||(x - u) R|| - logsumexp(W x + b)``, **higher = more OOD**.

    Args:
        features: ``(N, D)`` penultimate features.
        head: the IND linear head.
        u, ns, alpha: the origin, residual space and matching factor (:func:`fit_subspace`).
    Returns:
        ``(N,)`` float64 scores.
    """
    x = np.asarray(features, dtype=np.float64)
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
