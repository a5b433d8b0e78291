"""GL-MCM: Global-Local Maximum Concept Matching (Miyai, Yu, Irie, Aizawa, "Zero-Shot In-Distribution
Detection in Multi-Object Settings Using Vision-Language Foundation Models", arXiv 2304.04521, 2023).

Confidence = MCM on the global image embedding + the local term
``max_p max_c softmax_c(cos(patch_p, t_c) / tau_local)``; both temperatures are 1 as in the
paper's code. Score (ours, **higher = more OOD**) is its negative. Needs ``patch_embeds``
(dual-encoder patch features in the text space).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tagood.detectors.registry import register
from tagood.core.numeric import l2_normalize, softmax
from tagood.core.featureset import FeatureSet
from tagood.core.types import TokenSet
from tagood.detectors.vlm.base import VLMDetector, mcm_confidence


def local_confidence(patches: TokenSet, text: np.ndarray, tau: float = 1.0, chunk: int = 65536) -> np.ndarray:
    """``max over each sample's patches of max_c softmax_c(cos(patch, t_c) / tau)``, (N,) float64.

    A sample without patches gets 0 (no local evidence)."""
    t = l2_normalize(text)
    per_token = np.empty(len(patches.values), dtype=np.float64)
    for a in range(0, len(per_token), chunk):
        per_token[a : a + chunk] = softmax(l2_normalize(patches.values[a : a + chunk]) @ t.T / tau).max(axis=1)
    out = np.zeros(len(patches), dtype=np.float64)
    lens = patches.lengths
    nz = lens > 0
    if nz.any():
        out[nz] = np.maximum.reduceat(per_token, patches.offsets[:-1][nz])
    return out


@register("glmcm")
class GLMCM(VLMDetector):
    """GL-MCM (Miyai et al., 2023): -(global MCM + local MCM). Higher score = more OOD.

    ``lam`` weights the local term (1 in the paper); ``tau`` / ``tau_local`` are the temperatures (1, 1).
    """

    requires = frozenset({"image_embeds", "patch_embeds"})

    def __init__(self, tau: float = 1.0, tau_local: float = 1.0, lam: float = 1.0, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.hparams.update(tau=tau, tau_local=tau_local, lam=lam)
        self.tau, self.tau_local, self.lam = float(tau), float(tau_local), float(lam)

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert self.text is not None and data.patch_embeds is not None
        g = mcm_confidence(data.image_embeds, self.text, self.tau)
        return -(g + self.lam * local_confidence(data.patch_embeds, self.text, self.tau_local))
