"""Vision-language OOD detection: the dual-encoder protocol, an offline dual encoder, and the
detectors MCM, GL-MCM, NegLabel, CSP, AdaNeg (test-time), LoCoOp and KR-NFT (all scores: **higher = more OOD**)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tagood.vlm import adaneg, csp, glmcm, krnft, locoop, mcm, neglabel  # noqa: F401  (register the detectors)
from tagood.vlm.adaneg import AdaNeg
from tagood.vlm.csp import CSP
from tagood.vlm.glmcm import GLMCM
from tagood.vlm.krnft import KRNFT
from tagood.vlm.locoop import LoCoOp
from tagood.vlm.mcm import MCM
from tagood.vlm.neglabel import NegLabel
from tagood.vlm.protocol import DualEncoder, EncoderAdapter


def build_dual_encoder(spec: Mapping[str, Any] | None, backbone: Any = None, device: str = "cpu") -> Any:
    """The dual encoder a benchmark config names.

    ``None`` or ``{"name": "offline"}`` (+ ``mode``, ``logit_scale``, ...): the EfficientNet-Lite0 +
    MiniLM stand-in (:class:`tagood.vlm.offline.OfflineDualEncoder`), reusing ``backbone`` when it is
    EfficientNet-Lite0; ``{"name": "clip", "path": HF_DIR_OR_FILE, "arch": ...}``: CLIP from disk, one replica per
    device of a device list (``"cuda:0,cuda:1"``) with image batches split between them.
    """
    from tagood.backbones.multi import MultiDeviceEncoder, build_on_devices, parse_devices, primary_device

    spec = dict(spec or {})
    name = spec.pop("name", "offline")
    if name == "offline":
        from tagood.backbones.efficientnet import EfficientNetLite0
        from tagood.vlm.offline import OfflineDualEncoder

        bb = backbone if isinstance(backbone, EfficientNetLite0) else None
        return OfflineDualEncoder(backbone=bb, device=primary_device(device), **spec)
    if name == "clip":
        from tagood.backbones.clip import load_clip

        if "path" not in spec:
            raise ValueError("dual_encoder {'name': 'clip'} needs 'path' (a Hugging Face CLIP folder or an open_clip file)")
        batch = int(spec.pop("batch_size", 64))
        path, arch = spec.pop("path"), spec.pop("arch", None)
        enc = build_on_devices(lambda d: load_clip(path, arch=arch, device=d, batch_size=batch), device, wrap=MultiDeviceEncoder)
        return EncoderAdapter(enc, batch_size=batch * len(parse_devices(device)))
    raise ValueError(f"unknown dual encoder '{name}'; use 'offline' or 'clip'")


__all__ = ["AdaNeg", "CSP", "DualEncoder", "EncoderAdapter", "GLMCM", "KRNFT", "LoCoOp", "MCM", "NegLabel", "build_dual_encoder"]
