"""Mahalanobis (Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks", NeurIPS 2018)."""

from __future__ import annotations

import numpy as np

from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context


@register("mahalanobis")
class Mahalanobis(Detector):
    """Class-conditional Gaussians with a shared (tied) covariance on penultimate features, fitted on
    IND train; score = min_c (x - mu_c)^T Sigma^-1 (x - mu_c) (higher = more OOD). As in the common
    post-hoc use (OpenOOD's MDS) no input preprocessing and a single layer; Sigma^-1 is a
    pseudo-inverse computed in float64."""

    requires = frozenset({"features"})
    fit_requires = frozenset({"features", "labels"})

    def _fit(self, train: FeatureSet, context: Context) -> None:
        x = np.asarray(train.features, dtype=np.float64)
        y = np.asarray(train.labels)
        classes = np.unique(y[y >= 0])
        self.means = np.stack([x[y == c].mean(axis=0) for c in classes])
        centred = np.concatenate([x[y == c] - self.means[i] for i, c in enumerate(classes)])
        cov = centred.T @ centred / len(centred)
        self.precision = np.linalg.pinv(cov, hermitian=True)

    def _score(self, data: FeatureSet) -> np.ndarray:
        x = np.asarray(data.features, dtype=np.float64)
        # d_c = x P x - 2 x P mu_c + mu_c P mu_c, for all classes at once
        xp = x @ self.precision
        xpx = np.einsum("nd,nd->n", xp, x)
        mpm = np.einsum("cd,cd->c", self.means @ self.precision, self.means)
        d = xpx[:, None] - 2.0 * xp @ self.means.T + mpm[None, :]
        return d.min(axis=1)
