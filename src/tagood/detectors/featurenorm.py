"""FeatureNorm with NormRatio block selection (Yu, Shin, Lee, Jun & Lee, "Block Selection Method for Using
Feature Norm in Out-of-Distribution Detection", CVPR 2023).

FeatureNorm of a block: the per-channel spatial L2 norm of ReLU(block output), averaged over channels (the backbone
computes it for every block: ``block_norms``; EfficientNet-Lite: every MBConv block + the head convolution; RAM:
every Swin block, tokens as positions; CLIP: every ViT block over its patch tokens). The block is chosen as the
paper does, without OOD data: NormRatio = mean FeatureNorm on IND training images / mean FeatureNorm on their
jigsaw-shuffled versions (pseudo-OOD, ``context.pseudo_ood``); the block with the largest NormRatio is used.
Score = ``-FeatureNorm_selected(x)``, **higher = more OOD**.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike
from pydantic import Field

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.validation import NonNegInt
from tagood.detectors.base import ContextError, Detector, field_array
from tagood.detectors.options import DetectorOptions
from tagood.detectors.registry import register

log = logging.getLogger(__name__)

PAPER = ("Yu, Shin, Lee, Jun & Lee, Block Selection Method for Using Feature Norm in Out-of-Distribution Detection, "
         "CVPR 2023")


def norm_ratio(ind_block_norms: ArrayLike, pseudo_block_norms: ArrayLike) -> np.ndarray:
    """NormRatio of each block: mean FeatureNorm on IND training images / mean on pseudo-OOD (jigsaw) images,
    ``(B,)`` float64; the block with the largest ratio is FeatureNorm's block."""
    ind, ood = _column_means64(ind_block_norms), _column_means64(pseudo_block_norms)
    return ind / np.maximum(ood, 1e-12)


def _column_means64(x: ArrayLike) -> np.ndarray:
    """Float64 column means without a float64 copy of ``x`` (ImageNet-1K's training block norms: 1.28M rows). numpy
    adds the rows of a 2-D array with two or more columns in the same order whether it casts as it goes or reads a
    copy, so the means are the copy's bit for bit; one column it sums pairwise, by buffer when casting: copied."""
    a = np.asarray(x)
    if a.ndim == 2 and a.shape[1] >= 2:
        return np.asarray(a.mean(axis=0, dtype=np.float64))
    return np.asarray(np.asarray(a, dtype=np.float64).mean(axis=0))


def score(block_norms: ArrayLike, block: int) -> np.ndarray:
    """FeatureNorm OOD score: ``-block_norms[:, block]`` in float64, **higher = more OOD**.

    Args:
        block_norms: ``(N, B)`` per-block feature norms.
        block: the block scored (:func:`norm_ratio`'s argmax).
    Returns:
        ``(N,)`` float64 scores.
    """
    return -np.asarray(block_norms, dtype=np.float64)[:, block]


@register("featurenorm")
class FeatureNorm(Detector):
    """FeatureNorm of the block with the largest NormRatio (IND vs jigsaw-shuffled IND training images); ``block``
    forces a block. Score = ``-FeatureNorm_selected(x)`` (higher = more OOD). See :func:`score`."""

    class Options(DetectorOptions):
        block: NonNegInt | None = Field(None, description="score this block (0 = the first); none: the block with the "
                                                          "largest NormRatio")

    options: Options
    paper: ClassVar[str] = PAPER
    requires = frozenset({"block_norms"})
    context_requires = frozenset({"pseudo_ood"})
    norm_ratio: np.ndarray
    selected: int

    def _fit(self, train: FeatureSet, context: Context) -> None:
        pseudo = context.pseudo_ood
        if pseudo is None or pseudo.block_norms is None:
            raise ContextError("featurenorm.fit needs context.pseudo_ood with block_norms: pass "
                               "context=tagood.Context(pseudo_ood=tagood.FeatureSet(block_norms=...)) extracted from "
                               "jigsaw-shuffled IND training images")
        self.norm_ratio = norm_ratio(field_array(train, "block_norms"), pseudo.block_norms)
        block = self.options.block
        self.selected = int(block) if block is not None else int(np.argmax(self.norm_ratio))
        log.info("featurenorm: NormRatio per block %s -> block %d", np.round(self.norm_ratio, 3).tolist(), self.selected)

    def _score(self, data: FeatureSet) -> np.ndarray:
        return score(field_array(data, "block_norms"), self.selected)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"norm_ratio": self.norm_ratio}, {"selected": self.selected}

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.norm_ratio, self.selected = arrays["norm_ratio"], int(meta["selected"])
