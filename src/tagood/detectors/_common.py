"""Numerical helpers shared by the logit- and feature-based detectors."""

from __future__ import annotations

import numpy as np

from tagood.types import Context, LinearHead


def logsumexp(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    """Row-wise ``t * log sum exp(z / t)`` in float64, stable."""
    z = np.asarray(z, dtype=np.float64) / t
    m = z.max(axis=1, keepdims=True)
    return t * (m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))


def softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64) / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def energy_score(logits: np.ndarray, t: float = 1.0) -> np.ndarray:
    """Energy OOD score ``-t * logsumexp(logits / t)`` (Liu et al., NeurIPS 2020): higher = more OOD."""
    return -logsumexp(logits, t)


def head_logits(head: LinearHead, features: np.ndarray) -> np.ndarray:
    """IND logits of (edited) features through the linear head, float64."""
    return np.asarray(features, dtype=np.float64) @ head.weight.T.astype(np.float64) + head.bias.astype(np.float64)


def need_head(context: Context, who: str) -> LinearHead:
    if context.head is None:
        raise ValueError(f"{who} needs the IND linear head in context.head")
    return context.head


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
