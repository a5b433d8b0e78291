"""Vision-language OOD detection: the detectors MCM, GL-MCM, NegLabel, CSP, AdaNeg (test-time), LoCoOp
and KR-NFT (all scores: **higher = more OOD**). The dual encoders they run on (CLIP, the offline
EfficientNet-Lite0 + MiniLM stand-in), their protocol and factory live in :mod:`tagood.backbones`."""

from __future__ import annotations

from tagood.backbones.dual_encoder import DualEncoder, EncoderAdapter
from tagood.vlm import adaneg, csp, glmcm, krnft, locoop, mcm, neglabel  # noqa: F401  (register the detectors)
from tagood.vlm.adaneg import AdaNeg
from tagood.vlm.csp import CSP
from tagood.vlm.glmcm import GLMCM
from tagood.vlm.krnft import KRNFT
from tagood.vlm.locoop import LoCoOp
from tagood.vlm.mcm import MCM
from tagood.vlm.neglabel import NegLabel

__all__ = ["AdaNeg", "CSP", "DualEncoder", "EncoderAdapter", "GLMCM", "KRNFT", "LoCoOp", "MCM", "NegLabel"]
