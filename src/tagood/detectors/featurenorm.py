"""FeatureNorm with NormRatio block selection (Yu, Shin, Lee, Jun & Lee, "Block Selection Method for
Using Feature Norm in Out-of-Distribution Detection", CVPR 2023)."""

from __future__ import annotations

import logging

import numpy as np

from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context

log = logging.getLogger(__name__)


@register("featurenorm")
class FeatureNorm(Detector):
    """FeatureNorm of one block: the per-channel spatial L2 norm of ReLU(block output), averaged
    over channels (the backbone computes it for every block: ``block_norms``; EfficientNet-Lite: every
    MBConv block + the head convolution; RAM: every Swin block, tokens as positions; CLIP: every ViT
    block over its patch tokens). The block is chosen
    as the paper does, without OOD data: NormRatio = mean FeatureNorm on IND training images /
    mean FeatureNorm on their jigsaw-shuffled versions (pseudo-OOD, ``context.pseudo_ood``); the
    block with the largest NormRatio is used. ``block`` forces a block.
    Score = -FeatureNorm_selected(x) (higher = more OOD)."""

    requires = frozenset({"block_norms"})
    context_requires = frozenset({"pseudo_ood"})

    def __init__(self, block: int | None = None) -> None:
        super().__init__(block=block)
        self.block = block

    def _fit(self, train: FeatureSet, context: Context) -> None:
        pseudo = context.pseudo_ood
        if pseudo is None or pseudo.block_norms is None:
            raise ValueError("featurenorm needs context.pseudo_ood with block_norms (jigsaw-shuffled IND images)")
        ind = np.asarray(train.block_norms, dtype=np.float64).mean(axis=0)
        ood = np.asarray(pseudo.block_norms, dtype=np.float64).mean(axis=0)
        self.norm_ratio = ind / np.maximum(ood, 1e-12)
        self.selected = int(self.block) if self.block is not None else int(np.argmax(self.norm_ratio))
        log.info("featurenorm: NormRatio per block %s -> block %d", np.round(self.norm_ratio, 3).tolist(), self.selected)

    def _score(self, data: FeatureSet) -> np.ndarray:
        return -np.asarray(data.block_norms, dtype=np.float64)[:, self.selected]
