"""MSP: maximum softmax probability (Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks", ICLR 2017).

Score = ``-max_c softmax(f(x))_c``, **higher = more OOD**. No options; learns nothing from the training split.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from tagood.core.featureset import FeatureSet
from tagood.core.numeric import softmax
from tagood.detectors.base import Detector, field_array
from tagood.detectors.registry import register

PAPER = ("Hendrycks & Gimpel, A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural "
         "Networks, ICLR 2017")


def score(logits: ArrayLike) -> np.ndarray:
    """MSP OOD score of each row of ``logits``: ``-max_c softmax(logits)_c`` (in float64), **higher = more OOD**.

    Args:
        logits: ``(N, C)`` IND-class logits (``tagood bench`` uses its IND linear head's, ``head(features)``).
    Returns:
        ``(N,)`` float64 scores in ``[-1, -1/C]``.

    Example:
        >>> import numpy as np
        >>> score(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]))
        array([-0.5 , -0.75])
    """
    return -softmax(logits).max(axis=1)


@register("msp")
class MSP(Detector):
    """Maximum softmax probability. Score = ``-max_c softmax(logits)_c`` (higher = more OOD); training-free."""

    paper: ClassVar[str] = PAPER
    requires = frozenset({"logits"})
    fit_requires = frozenset()  # nothing is learned from the training split
    requires_fit = False

    def _score(self, data: FeatureSet) -> np.ndarray:
        return score(field_array(data, "logits"))
