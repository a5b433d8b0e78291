"""MaxLogit (Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt & Song, "Scaling Out-of-Distribution
Detection for Real-World Settings", ICML 2022).

Score = ``-max_c f(x)_c``, **higher = more OOD**. No options; learns nothing from the training split.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from tagood.core.featureset import FeatureSet
from tagood.detectors.base import Detector, field_array
from tagood.detectors.registry import register

PAPER = "Hendrycks et al., Scaling Out-of-Distribution Detection for Real-World Settings, ICML 2022"


def score(logits: ArrayLike) -> np.ndarray:
    """MaxLogit OOD score of each row of ``logits``: ``-max_c logits_c``, **higher = more OOD**. The maximum is taken
    in the logits' own dtype (exact: it is one of them) and returned as float64, without a float64 copy of the logits.

    Args:
        logits: ``(N, C)`` IND-class logits (``tagood bench`` uses its IND linear head's, ``head(features)``).
    Returns:
        ``(N,)`` float64 scores.
    """
    a = np.asarray(logits)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    return -a.max(axis=1).astype(np.float64)


@register("maxlogit")
class MaxLogit(Detector):
    """Maximum logit. Score = ``-max_c logits_c`` (higher = more OOD); training-free."""

    paper: ClassVar[str] = PAPER
    requires = frozenset({"logits"})
    fit_requires = frozenset()  # nothing is learned from the training split
    requires_fit = False

    def _score(self, data: FeatureSet) -> np.ndarray:
        return score(field_array(data, "logits"))
