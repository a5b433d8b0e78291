"""Turn a split spec of a benchmark config into an :class:`~tagood.data.ImageSource`.

Spec types: ``folder`` (root, classes?), ``list`` (file, root), ``fashion_mnist`` (split, classes,
root?), ``mnist5k``, ``digits``, ``fashion_clutter`` (part, sizes), ``scenes`` (part: train / test /
scene-near / scene-clutter / scene-far; sizes ``n_train_per_class``, ``n_test_per_class``, ``n_ood``;
``stamps`` = stamps folder, default ``$TAGOOD_STAMPS`` or the Debian one), ``imagenet`` (root, part).
Common keys: ``per_class`` (seeded per-class subsample), ``n`` (seeded subsample), ``classes``
(keep these labels), ``relabel`` (map kept classes to 0..k-1; default true for IND splits).
"""

from __future__ import annotations

from tagood.errors import ConfigError
from pathlib import Path
from typing import Any, Mapping

from tagood import data
from tagood.data.source import ImageSource


class SpecError(ConfigError):
    """A split spec is invalid; the message names the key."""


def _path(spec: Mapping[str, Any], key: str, base: Path) -> Path:
    if key not in spec:
        raise SpecError(f"a split of type {spec.get('type')!r} needs '{key}'")
    p = Path(str(spec[key])).expanduser()
    return p if p.is_absolute() else base / p


def build_source(spec: Mapping[str, Any], base_dir: Path, seed: int = 0, name: str = "") -> ImageSource:
    """Build the source a spec describes, then apply class selection and subsampling."""
    kind = spec.get("type")
    if kind == "folder":
        src: ImageSource = data.FolderSource(_path(spec, "root", base_dir))
    elif kind == "list":
        src = data.ListFileSource(_path(spec, "file", base_dir), _path(spec, "root", base_dir) if "root" in spec else _path(spec, "file", base_dir).parent)
    elif kind == "fashion_mnist":
        src = data.fashion_mnist(spec.get("split", "train"), root=spec.get("root"))
    elif kind == "mnist5k":
        src = data.mnist5k()
    elif kind == "digits":
        src = data.sklearn_digits()
    elif kind in ("fashion_clutter", "scenes"):
        parts = (_clutter_parts if kind == "fashion_clutter" else _scene_parts)(spec, seed)
        part = spec.get("part")
        if part not in parts:
            raise SpecError(f"{kind} part must be one of {sorted(parts)}, got {part!r}")
        src = parts[part]
    elif kind == "imagenet":
        from tagood.data import imagenet

        src = imagenet.imagenet_source(_path(spec, "root", base_dir), spec.get("part", "val"))
    else:
        raise SpecError(f"split '{name or '?'}': unknown split type {kind!r}; use folder, list, fashion_mnist, mnist5k, digits, fashion_clutter, scenes or imagenet")
    if "classes" in spec:
        src = data.select_classes(src, list(spec["classes"]), relabel=bool(spec.get("relabel", True)))
    if "per_class" in spec:
        src = data.subsample_per_class(src, int(spec["per_class"]), seed=seed)
    if "n" in spec:
        src = data.subsample(src, int(spec["n"]), seed=seed)
    if kind in ("mnist5k", "digits") or spec.get("ood_labels", False):
        src = data.SubsetSource(src, list(range(len(src))), labels=[-1] * len(src))
    if name:
        src.name = name
    return src


_CLUTTER_CACHE: dict[tuple, dict[str, ImageSource]] = {}


def _clutter_parts(spec: Mapping[str, Any], seed: int) -> dict[str, ImageSource]:
    key = (spec.get("n_train_per_class", 300), spec.get("n_test_per_class", 100), spec.get("n_ood", 600), seed)
    if key not in _CLUTTER_CACHE:
        _CLUTTER_CACHE[key] = data.fashion_clutter_splits(
            n_train_per_class=key[0], n_test_per_class=key[1], n_ood=key[2], seed=seed
        )
    return _CLUTTER_CACHE[key]


_SCENES_CACHE: dict[tuple, dict[str, ImageSource]] = {}


def _scene_parts(spec: Mapping[str, Any], seed: int) -> dict[str, ImageSource]:
    key = (int(spec.get("n_train_per_class", 200)), int(spec.get("n_test_per_class", 50)), int(spec.get("n_ood", 300)),
           seed, spec.get("stamps"))
    if key not in _SCENES_CACHE:
        _SCENES_CACHE[key] = data.scene_splits(n_train_per_class=key[0], n_test_per_class=key[1], n_ood=key[2],
                                               seed=seed, root=key[4])
    return _SCENES_CACHE[key]
