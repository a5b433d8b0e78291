"""Mahalanobis (Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", NeurIPS 2018).

Class-conditional Gaussians with a shared (tied) covariance on penultimate features, fitted on labelled IND training
features; ``score(x) = min_c (x - mu_c)^T Sigma^-1 (x - mu_c)``, **higher = more OOD**. As in the common post-hoc
use (OpenOOD's MDS): no input preprocessing, one layer; ``Sigma^-1`` is a pseudo-inverse computed in float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.detectors.base import Detector, field_array
from tagood.detectors.registry import register
from tagood.errors import InputError

PAPER = ("Lee, Lee, Lee & Shin, A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial "
         "Attacks, NeurIPS 2018")


#: Above this many float64 elements of centred training features (256 MiB) the tied covariance is summed over
#: blocks of rows: the fit then never holds a float64 copy of the whole training split (1.28M x 1,536 would be
#: 15.7 GB per copy). Up to it the product is the one it always was: the same numbers.
COV_BLOCK_ELEMENTS = 1 << 25


def fit_gaussians(features: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Class means ``(C, D)`` and the pseudo-inverse of the tied covariance ``(D, D)``, float64, from labelled IND
    training features (samples labelled ``< 0`` are left out).

    The samples are grouped by class once (a stable sort: the rows of a class keep their order), so the fit reads
    each row a bounded number of times whatever the number of classes, and the features are converted to float64
    block by block (:data:`COV_BLOCK_ELEMENTS`)."""
    x = np.asarray(features)
    y = np.asarray(labels).reshape(-1)
    labelled = np.flatnonzero(y >= 0)
    if len(labelled) == 0:
        raise InputError("mahalanobis.fit: no labelled IND training sample (every label is < 0); pass "
                         "train=tagood.FeatureSet(features=..., labels=...) with class ids 0..C-1")
    order = labelled[np.argsort(y[labelled], kind="stable")]  # the samples grouped by class, in their order
    _, starts, counts = np.unique(y[order], return_index=True, return_counts=True)
    means = np.stack([np.asarray(x[order[s : s + k]], dtype=np.float64).mean(axis=0)
                      for s, k in zip(starts, counts, strict=True)])
    of_row = np.repeat(np.arange(len(means)), counts)  # each grouped sample's class position
    rows = max(1, COV_BLOCK_ELEMENTS // max(1, x.shape[1]))
    cov = np.zeros((x.shape[1], x.shape[1]))
    for a in range(0, len(order), rows):
        centred = np.asarray(x[order[a : a + rows]], dtype=np.float64) - means[of_row[a : a + rows]]
        part = centred.T @ centred
        cov = part if a == 0 else cov + part
    cov = cov / len(order)
    return means, np.linalg.pinv(cov, hermitian=True)


def score(features: ArrayLike, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis OOD score: the squared Mahalanobis distance to the closest class mean,
    ``min_c (x - mu_c)^T P (x - mu_c)``, **higher = more OOD**.

    Args:
        features: ``(N, D)`` penultimate features.
        means: ``(C, D)`` class means; ``precision``: ``(D, D)`` inverse tied covariance (:func:`fit_gaussians`).
    Returns:
        ``(N,)`` float64 scores.
    """
    x = np.asarray(features, dtype=np.float64)
    # d_c = x P x - 2 x P mu_c + mu_c P mu_c, for all classes at once
    xp = x @ precision
    xpx = np.einsum("nd,nd->n", xp, x)
    mpm = np.einsum("cd,cd->c", means @ precision, means)
    d = xpx[:, None] - 2.0 * xp @ means.T + mpm[None, :]
    return d.min(axis=1)


@register("mahalanobis")
class Mahalanobis(Detector):
    """Minimum squared Mahalanobis distance to the IND class means under a tied covariance (needs training labels).
    Score = ``min_c (x - mu_c)^T Sigma^-1 (x - mu_c)`` (higher = more OOD). See :func:`score`."""

    paper: ClassVar[str] = PAPER
    requires = frozenset({"features"})
    fit_requires = frozenset({"features", "labels"})
    means: np.ndarray
    precision: np.ndarray

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.means, self.precision = fit_gaussians(field_array(train, "features"), field_array(train, "labels"))

    def _score(self, data: FeatureSet) -> np.ndarray:
        return score(field_array(data, "features"), self.means, self.precision)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"means": self.means, "precision": self.precision}, {}

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.means, self.precision = arrays["means"], arrays["precision"]
