"""Vision-language OOD detection: the detectors MCM, GL-MCM, NegLabel, CSP, AdaNeg (test-time), LoCoOp
and KR-NFT (all scores: **higher = more OOD**). The dual encoders they run on (CLIP, the offline
EfficientNet-Lite0 + MiniLM stand-in), their protocol and factory live in :mod:`tagood.backbones`.

Each detector declares its options once (``Options``, shared fields in :class:`tagood.detectors.vlm.base.VLMOptions`
and the mining / few-shot option models) and its paper (``paper``). The zero-shot ones (MCM, GL-MCM, NegLabel, CSP,
AdaNeg) score without ``fit`` once given ``tagood.Context(dual_encoder=..., class_names=[...])`` through ``attach``;
LoCoOp and KR-NFT train on few-shot IND images. All but AdaNeg save and load in the common format, the dual encoder
given back through ``Context`` (:mod:`tagood.detectors.vlm.base`)."""

from __future__ import annotations

from tagood.backbones.dual_encoder import DualEncoder, EncoderAdapter
from tagood.detectors.vlm import adaneg, csp, glmcm, krnft, locoop, mcm, neglabel  # noqa: F401  (register the detectors)
from tagood.detectors.vlm.adaneg import AdaNeg
from tagood.detectors.vlm.csp import CSP
from tagood.detectors.vlm.glmcm import GLMCM
from tagood.detectors.vlm.krnft import KRNFT
from tagood.detectors.vlm.locoop import LoCoOp
from tagood.detectors.vlm.mcm import MCM
from tagood.detectors.vlm.neglabel import NegLabel

__all__ = ["AdaNeg", "CSP", "DualEncoder", "EncoderAdapter", "GLMCM", "KRNFT", "LoCoOp", "MCM", "NegLabel"]
