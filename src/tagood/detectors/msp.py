"""MSP: maximum softmax probability (Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks", ICLR 2017).

Score = ``-max_c softmax(f(x))_c``, **higher = more OOD**. No options; learns nothing from the training split.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from tagood.core.featureset import FeatureSet
from tagood.detectors._common import logit_parts
from tagood.detectors.base import Detector, field_array
from tagood.detectors.registry import register

PAPER = ("Hendrycks & Gimpel, A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural "
         "Networks, ICLR 2017")


def score(logits: ArrayLike) -> np.ndarray:
    """MSP OOD score of each row of ``logits``: ``-max_c softmax(logits)_c``, **higher = more OOD**.

    Computed as ``-1 / (1 + r)`` with ``1 + r`` the float64 sum of ``exp(z_j - max z)``
    (:func:`tagood.detectors._common.logit_parts`): float64 logits in float64; float32 / float16 logits exponentiated
    in float32 (their own precision, no copy to float64) and summed in float64, so a confident sample's score is as
    exact as in float64 (float32 would round ``1 + r`` to 1 and tie such samples).

    Args:
        logits: ``(N, C)`` IND-class logits (``tagood bench`` uses its IND linear head's, ``head(features)``).
    Returns:
        ``(N,)`` float64 scores in ``[-1, -1/C]``.

    Example:
        >>> import numpy as np
        >>> score(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]))
        array([-0.5 , -0.75])
    """
    _, r = logit_parts(logits)
    return -1.0 / (1.0 + r)


@register("msp")
class MSP(Detector):
    """Maximum softmax probability. Score = ``-max_c softmax(logits)_c`` (higher = more OOD); training-free."""

    paper: ClassVar[str] = PAPER
    requires = frozenset({"logits"})
    fit_requires = frozenset()  # nothing is learned from the training split
    requires_fit = False

    def _score(self, data: FeatureSet) -> np.ndarray:
        return score(field_array(data, "logits"))
