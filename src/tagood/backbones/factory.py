"""Build the backbone / tagger and the dual encoder a benchmark config or a command line names.

One process drives one device. Several GPUs (or nodes) are used by starting one process per GPU with
``torchrun --nproc-per-node N -m tagood ...`` (:mod:`tagood.runtime.distributed`); a device list such as
``cuda:0,cuda:1`` or ``cuda:all`` is refused with that advice (:func:`single_device`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tagood.backbones.home import default_cache_root
from tagood.errors import ConfigError

__all__ = ["PATH_KEYS", "build_backbone", "build_dual_encoder", "single_device", "tagger_context"]

log = logging.getLogger(__name__)

#: spec keys holding file paths (resolved against the config file's folder)
PATH_KEYS = ("checkpoint", "tag_list", "thresholds", "path", "vocabulary")


def single_device(device: str) -> str:
    """``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ...) unchanged, after checking it names one device.

    Raises ``ValueError`` for a device list (``"cuda:0,cuda:1"``) or ``"cuda:all"``: tagood runs one process per
    device, started by ``torchrun``, and each process uses ``--device cuda`` (its local rank's GPU).
    """
    d = str(device).strip()
    if "," in d or d.endswith(":all") or not d:
        raise ValueError(
            f"--device {device!r}: one process drives one device. To use several GPUs, start one process per GPU: "
            "torchrun --nproc-per-node N -m tagood extract|bench|fit ... --device cuda "
            "(each process then uses the GPU of its local rank)")
    return d


def _resolve_paths(spec: Mapping[str, Any], base_dir: Path | None) -> dict[str, Any]:
    kw = {k: v for k, v in spec.items() if k != "name"}
    for k in PATH_KEYS:
        if k in kw and isinstance(kw[k], str) and base_dir is not None and not Path(kw[k]).expanduser().is_absolute():
            kw[k] = str(base_dir / kw[k])
    return kw


def build_backbone(spec: Mapping[str, Any], device: str = "cpu", base_dir: Path | None = None) -> Any:
    """``{"name": "efficientnet-lite0"}`` (default, offline), ``{"name": "efficientnet-lite2"}`` (offline, the
    stronger 260 px / 9x9 CAM tagger), ``{"name": "ram", "checkpoint": PTH_OR_DIR,
    "tag_list": TXT, "thresholds": TXT, "attention_layer": 0}`` or ``{"name": "clip", "path": HF_DIR,
    "vocabulary": TXT}``, or, for rehearsals and tests only, ``{"name": "synthetic", "tokens": 145, "width": 64,
    "tags": 200}`` (:class:`tagood.backbones.synthetic.SyntheticTagger`, which reads
    :class:`tagood.data.synthetic.SyntheticSource` images only); remaining keys go to the constructor/loader.
    Relative paths are taken from ``base_dir``. ``device`` names one device (:func:`single_device`)."""
    device = single_device(device)
    kw = _resolve_paths(spec, base_dir)
    name = spec.get("name", "efficientnet-lite0")
    need = {"ram": ("checkpoint", "--checkpoint (an official RAM .pth, with --tags, or a `tagood convert ram` folder)"),
            "clip": ("path", "--clip DIR (a Hugging Face CLIP directory with model.safetensors)")}
    if name in need and not kw.get(need[name][0]):
        raise ConfigError(f"the {name} backbone needs its weights: give {need[name][1]}; in a benchmark config, "
                          f"[backbone] {need[name][0]} = ...")
    if name in ("efficientnet-lite0", "efficientnet-lite2"):
        from tagood.backbones.efficientnet import EfficientNetLite0, EfficientNetLite2

        cls = EfficientNetLite0 if name == "efficientnet-lite0" else EfficientNetLite2
        return cls(device=device, **kw)
    if name == "ram":
        from tagood.backbones.ram import load_ram

        return load_ram(device=device, **kw)
    if name == "clip":
        from tagood.backbones.clip_tagger import load_clip_tagger

        return load_clip_tagger(device=device, **kw)
    if name == "synthetic":  # rehearsals and tests only: RAM-shaped outputs from synthetic images' identities
        from tagood.backbones.synthetic import SyntheticTagger

        return SyntheticTagger(device=device, **kw)
    raise ConfigError(f"unknown backbone '{name}' (--backbone); use efficientnet-lite0, efficientnet-lite2, ram or clip")


def work_dir(cache_root: str | Path | None = None) -> str:
    """Where TagOOD keeps its temporary object-token store: ``<cache root>/work``, or, when the cache root cannot be
    written (a read-only shared cache, which is read without its lock), a folder under the system's temp directory.

    Args:
        cache_root: the feature cache root (``None``: :func:`tagood.backbones.home.default_cache_root`).

    Returns:
        The folder's path (created by whoever writes into it).
    """
    import os
    import tempfile

    root = Path(cache_root if cache_root is not None else default_cache_root())
    work = root / "work"
    probe = work if work.exists() else root if root.exists() else None
    if probe is None or os.access(probe, os.W_OK | os.X_OK):
        return str(work)
    fallback = Path(tempfile.gettempdir()) / f"tagood-work-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    log.info("the cache root %s is not writable: TagOOD's temporary token store goes to %s", root, fallback)
    return str(fallback)


def tagger_context(backbone: Any, cache_root: str | Path | None = None) -> dict[str, Any]:
    """The :class:`tagood.core.context.Context` fields (as keyword arguments) a tagging detector (TagOOD, CS,
    TagScore) takes from the tagger: its
    tag names, ``attend`` (the tag-attention function: ``cam`` of the CAM tagger, ``attend`` of RAM),
    its per-tag thresholds (RAM's ``ram_tag_list_threshold.txt``) and the work directory under the
    feature cache where TagOOD keeps its temporary object-token store."""
    fields: dict[str, Any] = {"work_dir": work_dir(cache_root), "tag_names": getattr(backbone, "tag_names", None)}
    for key, attr in (("attend", "cam"), ("attend", "attend"), ("tag_thresholds", "tag_thresholds")):
        if getattr(backbone, attr, None) is not None and key not in fields:
            fields[key] = getattr(backbone, attr)
    return fields


def build_dual_encoder(spec: Mapping[str, Any] | None, backbone: Any = None, device: str = "cpu") -> Any:
    """The dual encoder for the vision-language methods.

    ``None`` or ``{"name": "offline"}`` (+ ``mode``, ``logit_scale``, ...): the EfficientNet-Lite0 +
    MiniLM stand-in (:class:`tagood.backbones.offline.OfflineDualEncoder`), reusing ``backbone`` when it is
    EfficientNet-Lite0; ``{"name": "clip", "path": HF_DIR_OR_FILE, "arch": ..., "batch_size": 64}``: CLIP from
    disk (:func:`tagood.backbones.clip.load_clip`), wrapped by :class:`tagood.backbones.dual_encoder.EncoderAdapter`.
    ``device`` names one device (:func:`single_device`).
    """
    device = single_device(device)
    spec = dict(spec or {})
    name = spec.pop("name", "offline")
    if name == "offline":
        from tagood.backbones.efficientnet import EfficientNetLite0
        from tagood.backbones.offline import OfflineDualEncoder

        bb = backbone if isinstance(backbone, EfficientNetLite0) else None
        return OfflineDualEncoder(backbone=bb, device=device, **spec)
    if name == "clip":
        from tagood.backbones.clip import load_clip
        from tagood.backbones.dual_encoder import EncoderAdapter

        if "path" not in spec:
            raise ValueError("dual_encoder {'name': 'clip'} needs 'path' (a Hugging Face CLIP folder or an open_clip file)")
        batch = int(spec.pop("batch_size", 64))
        path, arch = spec.pop("path"), spec.pop("arch", None)
        return EncoderAdapter(load_clip(path, arch=arch, device=device, batch_size=batch), batch_size=batch)
    raise ValueError(f"unknown dual encoder '{name}'; use 'offline' or 'clip'")
