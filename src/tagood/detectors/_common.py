"""Helpers shared by the logit- and feature-based detectors (the energy score, the IND head); the numeric
primitives (softmax, log-sum-exp, L2 normalisation) are in :mod:`tagood.core.numeric`."""

from __future__ import annotations

import numpy as np

from tagood.core.numeric import logsumexp
from tagood.core.context import Context
from tagood.core.types import LinearHead


def energy_score(logits: np.ndarray, t: float = 1.0) -> np.ndarray:
    """Energy OOD score ``-t * logsumexp(logits / t)`` (Liu et al., NeurIPS 2020): higher = more OOD."""
    return -logsumexp(logits, axis=1, temperature=t)


def head_logits(head: LinearHead, features: np.ndarray) -> np.ndarray:
    """IND logits of (edited) features through the linear head, float64."""
    return np.asarray(features, dtype=np.float64) @ head.weight.T.astype(np.float64) + head.bias.astype(np.float64)


def need_head(context: Context, who: str) -> LinearHead:
    if context.head is None:
        raise ValueError(f"{who} needs the IND linear head in context.head")
    return context.head
