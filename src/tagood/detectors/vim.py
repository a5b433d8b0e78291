"""ViM (Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022)."""

from __future__ import annotations

import numpy as np

from tagood.detectors._common import head_logits, need_head
from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.numeric import logsumexp
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context


def default_dim(feature_dim: int) -> int:
    """Principal-subspace dimension D as in the paper's code: 1000 if N >= 2048, 512 if N >= 768, else N / 2."""
    if feature_dim >= 2048:
        return 1000
    if feature_dim >= 768:
        return 512
    return feature_dim // 2


@register("vim")
class ViM(Detector):
    """Virtual logit from the residual of features outside the principal subspace of IND training
    features (origin u = -pinv(W) b), matched to the logits by alpha = mean max-logit / mean residual
    norm on IND train. Score = alpha * ||x_perp|| - logsumexp(logits) (higher = more OOD)."""

    requires = frozenset({"features"})
    context_requires = frozenset({"head"})

    def __init__(self, dim: int | None = None) -> None:
        super().__init__(dim=dim)
        self.dim = dim

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.head = need_head(context, self.name)
        x = np.asarray(train.features, dtype=np.float64)
        w, b = self.head.weight.astype(np.float64), self.head.bias.astype(np.float64)
        self.u = -np.linalg.pinv(w) @ b
        xc = x - self.u
        d = self.dim if self.dim is not None else default_dim(x.shape[1])
        d = min(d, x.shape[1] - 1)
        cov = xc.T @ xc / len(xc)
        eigval, eigvec = np.linalg.eigh(cov)  # ascending
        order = np.argsort(eigval)[::-1]
        self.ns = np.ascontiguousarray(eigvec[:, order[d:]])  # the residual (null) space
        self.d = d
        vlogit = np.linalg.norm(xc @ self.ns, axis=1)
        self.alpha = float(head_logits(self.head, x).max(axis=1).mean() / max(vlogit.mean(), 1e-12))

    def residual(self, features: np.ndarray) -> np.ndarray:
        return np.linalg.norm((np.asarray(features, dtype=np.float64) - self.u) @ self.ns, axis=1)

    def _score(self, data: FeatureSet) -> np.ndarray:
        x = np.asarray(data.features, dtype=np.float64)
        return self.alpha * self.residual(x) - logsumexp(head_logits(self.head, x))
