"""What the detectors that score through the IND linear head share (ReAct, ASH, LHAct, ViM): the head's logits
and the head itself, taken from ``context.head`` or fitted from the training labels as ``tagood bench`` fits it.
The numeric primitives (softmax, log-sum-exp, L2 normalisation) are in :mod:`tagood.core.numeric`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.types import LinearHead
from tagood.detectors.base import Detector
from tagood.detectors.head import fit_head

log = logging.getLogger(__name__)


def head_logits(head: LinearHead, features: ArrayLike) -> np.ndarray:
    """IND logits ``features @ W.T + b`` of (edited) features through the linear head, in float64."""
    return np.asarray(features, dtype=np.float64) @ head.weight.T.astype(np.float64) + head.bias.astype(np.float64)


class HeadDetector(Detector):
    """A detector that recomputes IND logits from edited penultimate features through the IND linear head.

    The head is ``context.head`` when given -- ``tagood bench`` passes the one it fits -- else it is fitted here
    from the training split's features and labels with the benchmark's own call
    (:func:`tagood.detectors.head.fit_head`, ``seed`` and ``device`` from the context), so the API gives the
    benchmark's scores. The head is part of the fitted state (saved with the detector).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    context_requires: ClassVar[frozenset[str]] = frozenset({"head"})
    head: LinearHead

    def _can_build(self, entry: str, train: FeatureSet) -> bool:
        return entry == "head" and train.has("labels") and train.has("features")

    def _take_head(self, train: FeatureSet, context: Context) -> LinearHead:
        if context.head is not None:
            return context.head
        log.info("%s: no context.head; fitting the IND linear head on the training features and labels as tagood bench does",
                 self.name)
        return fit_head(train, seed=context.seed, device=context.device)

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.head = self._take_head(train, context)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return ({"head.weight": self.head.weight, "head.bias": self.head.bias},
                {"head_class_names": list(self.head.class_names) if self.head.class_names is not None else None})

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.head = LinearHead(arrays["head.weight"], arrays["head.bias"], meta.get("head_class_names"))
