"""GL-MCM: Global-Local Maximum Concept Matching (Miyai, Yu, Irie, Aizawa, "Zero-Shot In-Distribution Detection
in Multi-Object Settings Using Vision-Language Foundation Models", arXiv 2304.04521, 2023; IJCV 2025).

Confidence = MCM on the global image embedding + ``lam`` x the local term
``max_p max_c softmax_c(cos(patch_p, t_c) / tau_local)`` over the image's patches; both temperatures are 1 and
``lam = 1`` as in the paper's code. Score (ours, **higher = more OOD**): its negative. Needs ``patch_embeds``
(dual-encoder patch features in the text space).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from pydantic import Field

from tagood.core.featureset import FeatureSet
from tagood.core.numeric import l2_normalize, softmax
from tagood.core.types import TokenSet
from tagood.core.validation import NonNegFloat, PosFloat
from tagood.detectors.registry import register
from tagood.detectors.vlm.base import mcm_confidence
from tagood.detectors.vlm.mcm import MCM

PAPER = ("Miyai, Yu, Irie & Aizawa, Zero-Shot In-Distribution Detection in Multi-Object Settings Using "
         "Vision-Language Foundation Models, arXiv 2304.04521 (2023); IJCV 2025")


def local_confidence(patches: TokenSet, text: np.ndarray, tau: float = 1.0, chunk: int = 65536) -> np.ndarray:
    """GL-MCM's local term: ``max`` over each sample's patches of ``max_c softmax_c(cos(patch, t_c) / tau)``.

    Args:
        patches: the patch embeddings of N samples (a ragged :class:`tagood.core.types.TokenSet`).
        text: ``(C, E)`` IND class-prompt embeddings.
        tau: softmax temperature (the paper: 1).
        chunk: patches per block (bounds memory).
    Returns:
        ``(N,)`` float64 confidences (**higher = more IND**); a sample without patches gets 0 (no local evidence).
    """
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


def score(image_embeds: np.ndarray, patches: TokenSet, text: np.ndarray, tau: float = 1.0, tau_local: float = 1.0,
          lam: float = 1.0) -> np.ndarray:
    """GL-MCM OOD score: ``-(global MCM + lam x local MCM)``, **higher = more OOD**.

    Args:
        image_embeds: ``(N, E)`` global image embeddings.
        patches: the N samples' patch embeddings in the text space.
        text: ``(C, E)`` IND class-prompt embeddings.
        tau: temperature of the global term; ``tau_local``: of the local term; ``lam``: the local term's weight
            (the paper: 1, 1, 1).
    Returns:
        ``(N,)`` float64 scores.
    """
    return -(mcm_confidence(image_embeds, text, tau) + lam * local_confidence(patches, text, tau_local))


@register("glmcm")
class GLMCM(MCM):
    """GL-MCM (Miyai et al., 2023 / IJCV 2025): ``-(global MCM + lam x local MCM)``, higher = more OOD. Zero-shot,
    like MCM; needs ``patch_embeds`` to score. See :func:`score`."""

    class Options(MCM.Options):
        tau_local: PosFloat = Field(1.0, description="softmax temperature of the local (patch) term (the paper: 1)")
        lam: NonNegFloat = Field(1.0, description="weight of the local term (the paper: 1; 0 = MCM)")

    options: Options
    paper: ClassVar[str] = PAPER
    requires: ClassVar[frozenset[str]] = frozenset({"image_embeds", "patch_embeds"})

    def _score(self, data: FeatureSet) -> np.ndarray:
        o = self.options
        assert data.image_embeds is not None and data.patch_embeds is not None
        return score(data.image_embeds, data.patch_embeds, self._prompt_rows(), o.tau, o.tau_local, o.lam)
