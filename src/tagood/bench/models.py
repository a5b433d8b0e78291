"""Build the backbone / tagger and the dual encoder a benchmark config names."""

from __future__ import annotations

from typing import Any, Mapping


def build_backbone(spec: Mapping[str, Any], device: str = "cpu") -> Any:
    """``{"name": "efficientnet-lite0"}`` (default, offline), ``{"name": "ram", "checkpoint": ..., "tags": ...}``
    or ``{"name": "clip", "path": ...}``; remaining keys are passed to the constructor/loader."""
    kw = {k: v for k, v in spec.items() if k != "name"}
    name = spec.get("name", "efficientnet-lite0")
    if name == "efficientnet-lite0":
        from tagood.backbones.efficientnet import EfficientNetLite0

        return EfficientNetLite0(device=device, **kw)
    if name == "ram":
        from tagood.backbones.ram import load_ram

        return load_ram(device=device, **kw)
    if name == "clip":
        from tagood.backbones.clip import load_clip_tagger

        return load_clip_tagger(device=device, **kw)
    raise ValueError(f"unknown backbone '{name}'; use efficientnet-lite0, ram or clip")


def build_dual_encoder(spec: Mapping[str, Any] | None, backbone: Any, device: str = "cpu") -> Any:
    """The dual encoder for vision-language methods: the offline EfficientNet-Lite0 + MiniLM stand-in by default."""
    from tagood.vlm import build_dual_encoder as _build

    return _build(spec, backbone, device=device)
