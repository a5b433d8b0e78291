"""Build the backbone / tagger and the dual encoder a benchmark config names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


#: spec keys holding file paths (resolved against the config file's folder)
PATH_KEYS = ("checkpoint", "tag_list", "thresholds", "path", "vocabulary")


def build_backbone(spec: Mapping[str, Any], device: str = "cpu", base_dir: Path | None = None) -> Any:
    """``{"name": "efficientnet-lite0"}`` (default, offline), ``{"name": "efficientnet-lite2"}`` (offline, the
    stronger 260 px / 9x9 CAM tagger), ``{"name": "ram", "checkpoint": PTH_OR_DIR,
    "tag_list": TXT, "thresholds": TXT, "attention_layer": 0}`` or ``{"name": "clip", "path": HF_DIR,
    "vocabulary": TXT}``; remaining keys go to the constructor/loader. Relative paths are taken from ``base_dir``.
    ``device`` may list several devices (``"cuda:0,cuda:1"``, ``"cuda:all"``): one replica is loaded on each and
    extraction batches are split between them (:mod:`tagood.backbones.multi`)."""
    from tagood.backbones.multi import build_on_devices

    return build_on_devices(lambda d: _build_one(spec, d, base_dir), device)


def _build_one(spec: Mapping[str, Any], device: str, base_dir: Path | None) -> Any:
    kw = {k: v for k, v in spec.items() if k != "name"}
    for k in PATH_KEYS:
        if k in kw and isinstance(kw[k], str) and base_dir is not None and not Path(kw[k]).expanduser().is_absolute():
            kw[k] = str(base_dir / kw[k])
    name = spec.get("name", "efficientnet-lite0")
    if name in ("efficientnet-lite0", "efficientnet-lite2"):
        from tagood.backbones.efficientnet import EfficientNetLite0, EfficientNetLite2

        cls = EfficientNetLite0 if name == "efficientnet-lite0" else EfficientNetLite2
        return cls(device=device, **kw)
    if name == "ram":
        from tagood.backbones.ram import load_ram

        return load_ram(device=device, **kw)
    if name == "clip":
        from tagood.backbones.clip import load_clip_tagger

        return load_clip_tagger(device=device, **kw)
    raise ValueError(f"unknown backbone '{name}'; use efficientnet-lite0, efficientnet-lite2, ram or clip")


def tagger_context(backbone: Any, cache_root: str | Path | None = None) -> dict[str, Any]:
    """The ``Context.extra`` entries a tagging detector (TagOOD, CS, TagScore) takes from the tagger: its
    tag names, ``attend`` (the tag-attention function: ``cam`` of the CAM tagger, ``attend`` of RAM),
    its per-tag thresholds (RAM's ``ram_tag_list_threshold.txt``) and the work directory under the
    feature cache where TagOOD keeps its temporary object-token store."""
    from tagood.extract import default_cache_root

    extra: dict[str, Any] = {"work_dir": str(Path(cache_root if cache_root is not None else default_cache_root()) / "work"),
                             "tag_names": getattr(backbone, "tag_names", None)}
    for key, attr in (("attend", "cam"), ("attend", "attend"), ("tag_thresholds", "tag_thresholds")):
        if getattr(backbone, attr, None) is not None and key not in extra:
            extra[key] = getattr(backbone, attr)
    return extra


def build_dual_encoder(spec: Mapping[str, Any] | None, backbone: Any, device: str = "cpu") -> Any:
    """The dual encoder for vision-language methods: the offline EfficientNet-Lite0 + MiniLM stand-in by default."""
    from tagood.vlm import build_dual_encoder as _build

    return _build(spec, backbone, device=device)
