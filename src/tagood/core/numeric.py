"""Numerical helpers shared by backbones, detectors and vision-language methods: one softmax, one
log-softmax, one log-sum-exp and one L2 normaliser, all stable against overflow.

This module is a base layer: it imports nothing from ``tagood``. The functions compute in the
``dtype`` they are given (default float64) so a caller that keeps float32 features for memory
gets exactly what a float32 computation gives.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

__all__ = ["FloatArray", "l2_normalize", "log_softmax", "logsumexp", "softmax"]

#: A floating-point array of any precision: what these helpers return (in the ``dtype`` they were given).
FloatArray = NDArray[np.floating[Any]]


def _prepare(z: ArrayLike, temperature: float, dtype: DTypeLike) -> FloatArray:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x: FloatArray = np.asarray(z, dtype=dtype)
    return x / x.dtype.type(temperature) if temperature != 1.0 else x


def logsumexp(z: ArrayLike, axis: int = -1, temperature: float = 1.0,
              dtype: DTypeLike = np.float64) -> FloatArray:
    """``temperature * log(sum(exp(z / temperature)))`` along ``axis`` (that axis removed), stable.

    Equals ``temperature * scipy.special.logsumexp(z / temperature, axis)``; the energy score of
    Liu et al. (NeurIPS 2020) is its negative (higher = more OOD).
    """
    x = _prepare(z, temperature, dtype)
    m = x.max(axis=axis, keepdims=True)
    out: FloatArray = np.squeeze(m, axis=axis) + np.log(np.exp(x - m).sum(axis=axis))
    return out * out.dtype.type(temperature) if temperature != 1.0 else out


def softmax(z: ArrayLike, axis: int = -1, temperature: float = 1.0,
            dtype: DTypeLike = np.float64) -> FloatArray:
    """``softmax(z / temperature)`` along ``axis``, computed in ``dtype`` (default float64), stable."""
    x = _prepare(z, temperature, dtype)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    out: FloatArray = e / e.sum(axis=axis, keepdims=True)
    return out


def log_softmax(z: ArrayLike, axis: int = -1, temperature: float = 1.0,
                dtype: DTypeLike = np.float64) -> FloatArray:
    """``log(softmax(z / temperature))`` along ``axis``, computed in ``dtype``, without forming the softmax."""
    x = _prepare(z, temperature, dtype)
    x = x - x.max(axis=axis, keepdims=True)
    out: FloatArray = x - np.log(np.exp(x).sum(axis=axis, keepdims=True))
    return out


def l2_normalize(x: ArrayLike, axis: int = -1, eps: float = 1e-12,
                 dtype: DTypeLike = np.float64) -> FloatArray:
    """``x`` scaled to unit L2 norm along ``axis``, computed in ``dtype`` (default float64).

    Vectors with norm below ``eps`` are divided by ``eps`` instead (zero vectors stay zero).
    """
    a: FloatArray = np.asarray(x, dtype=dtype)
    out: FloatArray = a / np.maximum(np.linalg.norm(a, axis=axis, keepdims=True), a.dtype.type(eps))
    return out
