"""LHAct (Yuan, He, Han & Yin, "LHAct: Rectifying Extremely Low and High Activations for Out-of-Distribution
Detection", ACM MM 2023), as cited by the TagOOD paper.

Our reading of the method: per unit of the penultimate layer, IND training statistics give a low and a high
threshold; activations above the high threshold are clipped to it (extremely high activations, as in ReAct but per
unit) and activations below the low threshold are set to zero (extremely low activations carry little class
evidence but shift OOD logits); the rectified features go through the IND linear head and are scored with energy:
``score(x) = -logsumexp(W rect(x) + b)``, **higher = more OOD**. The thresholds are per-unit percentiles of the IND
training activations (defaults: low 10th, high 90th); the TagOOD paper notes LHAct's published hyperparameters were
tuned for another backbone, so both are options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike
from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.types import LinearHead
from tagood.core.validation import Percentile
from tagood.detectors import energy
from tagood.detectors._common import HeadDetector, head_logits
from tagood.detectors.base import field_array
from tagood.detectors.options import DetectorOptions
from tagood.detectors.registry import register

PAPER = "Yuan, He, Han & Yin, LHAct: Rectifying Extremely Low and High Activations for Out-of-Distribution Detection, ACM MM 2023"


def unit_thresholds(train_features: ArrayLike, low_percentile: float = 10.0,
                    high_percentile: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit ``(low, high)`` thresholds: percentiles (numpy's linear interpolation) of each unit's IND training
    activations ``(N, D)``, float64 ``(D,)`` each."""
    x = np.asarray(train_features, dtype=np.float64)
    return np.percentile(x, low_percentile, axis=0), np.percentile(x, high_percentile, axis=0)


def rectify(features: ArrayLike, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Clip each unit at ``high`` and zero what is then below ``low``, in float64."""
    x = np.minimum(np.asarray(features, dtype=np.float64), high)
    return np.where(x < low, 0.0, x)


def score(features: ArrayLike, head: LinearHead, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """LHAct OOD score: energy of the IND logits of the rectified features, ``-logsumexp(W rect(x) + b)``,
    **higher = more OOD**.

    Args:
        features: ``(N, D)`` penultimate features.
        head: the IND linear head.
        low, high: per-unit thresholds ``(D,)`` (:func:`unit_thresholds` of the training features).
    Returns:
        ``(N,)`` float64 scores.
    """
    return energy.score(head_logits(head, rectify(features, low, high)))


@register("lhact")
class LHAct(HeadDetector):
    """Rectify extremely low (-> 0) and extremely high (-> per-unit cap) activations, then energy through the IND
    head. Score = ``-logsumexp(head(rect(x)))`` (higher = more OOD). See :func:`score`."""

    class Options(DetectorOptions):
        low_percentile: Percentile = Field(10.0, description="per-unit percentile of the IND training activations below "
                                                             "which an activation is set to 0")
        high_percentile: Percentile = Field(90.0, description="per-unit percentile of the IND training activations at "
                                                              "which activations are clipped")

        @model_validator(mode="after")
        def _order(self) -> LHAct.Options:
            if not self.low_percentile < self.high_percentile:
                raise PydanticCustomError("order", "low_percentile must be below high_percentile")
            return self

    options: Options
    paper: ClassVar[str] = PAPER
    low: np.ndarray
    high: np.ndarray

    def _fit(self, train: FeatureSet, context: Context) -> None:
        super()._fit(train, context)
        o = self.options
        self.low, self.high = unit_thresholds(field_array(train, "features"), o.low_percentile, o.high_percentile)

    def rectify(self, x: ArrayLike) -> np.ndarray:
        """The fitted rectification of features ``x`` (see :func:`rectify`)."""
        return rectify(x, self.low, self.high)

    def _score(self, data: FeatureSet) -> np.ndarray:
        return score(field_array(data, "features"), self.head, self.low, self.high)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, meta = super()._state()
        return {**arrays, "low": self.low, "high": self.high}, meta

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        super()._set_state(arrays, meta)
        self.low, self.high = arrays["low"], arrays["high"]
