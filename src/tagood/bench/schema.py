"""The schema of a benchmark config (TOML): every key, every split type, the backbone, pseudo-OOD and options."""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      create_model, model_validator)
from pydantic_core import PydanticCustomError

from tagood.errors import ConfigError
from tagood.core.validation import *  # noqa: F403
from tagood.core.validation import _Strict, _finite_check, _not_bool, _type_word, format_errors
from tagood.detectors.options import *  # noqa: F403
from tagood.detectors.options import _spec_options


class _SplitCommon(_Strict):
    per_class: PosInt | None = None
    n: PosInt | None = None
    classes: list[Int] | None = None
    relabel: bool | None = None
    ood_labels: bool | None = None


class FolderSplit(_SplitCommon):
    type: Literal["folder"]
    root: str = Field(description="image folder, one sub-folder per class; relative to the config file")


class ListSplit(_SplitCommon):
    type: Literal["list"]
    file: str
    root: str | None = None


class FashionSplit(_SplitCommon):
    type: Literal["fashion_mnist"]
    split: Literal["train", "test"] = "train"
    root: str | None = None


class MnistSplit(_SplitCommon):
    type: Literal["mnist5k"]


class DigitsSplit(_SplitCommon):
    type: Literal["digits"]


class _Generated(_SplitCommon):
    n_train_per_class: PosInt | None = None
    n_test_per_class: PosInt | None = None
    n_ood: PosInt | None = None


class ClutterSplit(_Generated):
    type: Literal["fashion_clutter"]
    part: Literal["train", "test", "clutter-near", "clutter-only"]


class ScenesSplit(_Generated):
    type: Literal["scenes"]
    part: Literal["train", "test", "scene-near", "scene-clutter", "scene-far"]
    stamps: str | None = None


class ImageNetSplit(_SplitCommon):
    type: Literal["imagenet"]
    root: str
    part: str = "val"


SPLIT_TYPES: dict[str, type[_SplitCommon]] = {
    "folder": FolderSplit, "list": ListSplit, "fashion_mnist": FashionSplit, "mnist5k": MnistSplit, "digits": DigitsSplit,
    "fashion_clutter": ClutterSplit, "scenes": ScenesSplit, "imagenet": ImageNetSplit,
}


def _split_tag(v: Any) -> str | None:
    t = v.get("type") if isinstance(v, Mapping) else getattr(v, "type", None)
    return t if t in SPLIT_TYPES else None


def _check_split(v: Any) -> Any:
    """A split is a table with a known ``type`` (checked before the union picks the model of that type)."""
    if not isinstance(v, Mapping):
        raise PydanticCustomError("split", "a split is a table with 'type' = one of {types}", {"types": ", ".join(SPLIT_TYPES)})
    if "type" not in v:
        raise PydanticCustomError("missing_type", "a split needs 'type': one of {types}", {"types": ", ".join(SPLIT_TYPES)})
    t = v["type"]
    if t not in SPLIT_TYPES:
        raise PydanticCustomError("split_type", "unknown split type{hint}; use one of {types}",
                                  {"hint": suggest(str(t), SPLIT_TYPES) if isinstance(t, str) else "", "types": ", ".join(SPLIT_TYPES)})
    return v


Split = Annotated[Union[tuple(Annotated[m, Tag(t)] for t, m in SPLIT_TYPES.items())],  # type: ignore[misc]
                  Discriminator(_split_tag), BeforeValidator(_check_split)]


class EfficientNetSpec(_Strict):
    name: Literal["efficientnet-lite0", "efficientnet-lite2"]
    engine: Literal["auto", "onnx", "torch"] | None = None
    batch_size: PosInt | None = None
    num_threads: PosInt | None = None
    top_k_tags: PosInt | None = None
    cache_dir: str | None = None


class RAMSpec(_Strict):
    name: Literal["ram"]
    checkpoint: str
    tag_list: str | None = None
    thresholds: str | None = None
    image_size: PosInt | None = None
    head_heads: PosInt | None = None
    batch_size: PosInt | None = None
    top_k_tags: PosInt | None = None
    attention_layer: NonNegInt | None = None
    candidate_tags: list[NonNegInt] | None = None
    resize: Literal["square", "crop"] | None = None
    cross_attention: bool | None = None


class CLIPSpec(_Strict):
    name: Literal["clip"]
    path: str
    vocabulary: str | list[str] | None = None
    templates: list[str] | None = None
    arch: str | None = None
    batch_size: PosInt | None = None
    top_k_tags: PosInt | None = None
    dense: Literal["value", "plain"] | None = None


BACKBONES: dict[str, type[_Strict]] = {"efficientnet-lite0": EfficientNetSpec, "efficientnet-lite2": EfficientNetSpec,
                                       "ram": RAMSpec, "clip": CLIPSpec}


def _backbone_tag(v: Any) -> str | None:
    n = v.get("name") if isinstance(v, Mapping) else getattr(v, "name", None)
    if n not in BACKBONES:
        return None
    return "efficientnet" if n.startswith("efficientnet") else n


def _check_backbone(v: Any) -> Any:
    if not isinstance(v, Mapping):
        raise PydanticCustomError("backbone", "[backbone] is a table with 'name' = one of {names}", {"names": ", ".join(BACKBONES)})
    v = {"name": "efficientnet-lite0", **v}
    n = v["name"]
    if n not in BACKBONES:
        raise PydanticCustomError("backbone", "unknown backbone{hint}; use one of {names}",
                                  {"hint": suggest(str(n), BACKBONES) if isinstance(n, str) else "", "names": ", ".join(BACKBONES)})
    return v


Backbone = Annotated[Union[Annotated[EfficientNetSpec, Tag("efficientnet")], Annotated[RAMSpec, Tag("ram")],
                           Annotated[CLIPSpec, Tag("clip")]], Discriminator(_backbone_tag), BeforeValidator(_check_backbone)]


class PseudoOOD(_Strict):
    type: Literal["jigsaw"] = "jigsaw"
    of: str = "train"
    n: PosInt = 600


def _method_spec(v: Any) -> Any:
    if not isinstance(v, str):
        raise PydanticCustomError("method", "a method is a string such as 'knn[k=50]'")
    _spec_options(v)
    return v


def _method_defaults(v: Any) -> Any:
    from tagood.detectors.registry import available, get_class

    if not isinstance(v, Mapping):
        raise PydanticCustomError("method_defaults", "method_defaults is a table [options.method_defaults.<method>]")
    names = available()
    for base, opts in v.items():
        if base not in names:
            raise PydanticCustomError("unknown_method", "unknown detector '{name}'{hint}",
                                      {"name": str(base), "hint": suggest(str(base), names)})
        if not isinstance(opts, Mapping):
            raise PydanticCustomError("method_defaults", "method_defaults.{name} must be a table of options", {"name": base})
        try:
            check_detector_options(base, get_class(base), opts, quote=False)
        except OptionError as e:
            raise PydanticCustomError("method_option", "{msg}", {"msg": str(e)}) from None
    return v


def _stream_above(v: Any) -> Any:
    if v is None or (isinstance(v, str) and v.lower() in ("none", "never")):
        return v
    _finite_check(v)
    if not isinstance(v, (int, float)):
        raise PydanticCustomError("stream_above_gb", "must be a number of GiB, or 'never'")
    return v


class BenchOptions(_Strict):
    """``[options]`` of a benchmark config (and of the built-in ones)."""

    method_defaults: Annotated[dict[str, dict[str, Any]], BeforeValidator(_method_defaults)] | None = None
    stream_above_gb: Annotated[Any, BeforeValidator(_stream_above)] = None
    shard_size: PosInt | None = None
    dual_encoder: dict[str, Any] | None = None
    ood_groups: dict[str, list[str]] | None = None
    stream_id_ood_ratio: PosFloat | None = None
    stream_mode: Literal["joint", "per_set"] | None = None
    quick: bool | None = None


class ConfigModel(_Strict):
    """A TOML benchmark config (``tagood bench CONFIG``), after ``benchmark = "<built-in>"`` is merged in."""

    name: str | None = None
    benchmark: str | None = None
    quick: bool | None = None
    methods: list[Annotated[str, BeforeValidator(_method_spec)]] | None = None
    backbone: Backbone | None = None
    seed: NonNegInt = 0
    batch_size: PosInt = 64
    train: Split
    test: Split
    ood: dict[str, Split] = Field(min_length=1)
    pseudo_ood: PseudoOOD | None = None
    options: BenchOptions | None = None

    @model_validator(mode="after")
    def _pseudo_of(self) -> "ConfigModel":
        if self.pseudo_ood is not None:
            splits = ["train", "test", *self.ood]
            if self.pseudo_ood.of not in splits:
                raise PydanticCustomError("pseudo_of", "pseudo_ood.of must name a split: {splits}", {"splits": ", ".join(splits)})
        return self



def validate_config(data: Mapping[str, Any], path: str | Path) -> ConfigModel:
    """Validate a benchmark config read from ``path`` (after a ``benchmark = ...`` base is merged in).
    Raises :class:`SchemaError` naming the file and each bad key (with a suggestion for a misspelt one);
    method specs and ``options.method_defaults`` are checked against :data:`DETECTOR_OPTIONS`."""
    try:
        return ConfigModel.model_validate(dict(data))
    except ValidationError as e:
        raise SchemaError(format_errors(e, data, str(path), "See README 'Your own benchmark' for the keys")) from None
