"""The benchmark config, declared once: :class:`BenchConfig` is both the schema of a TOML config file and the object
the runner reads.

Every key has its type, range, default and a one-line description here; a config file is validated into a
:class:`BenchConfig` (:func:`validate_config`, :func:`tagood.bench.config.load_config`), the built-in benchmarks
are built as one, and each split builds its own image source (:meth:`tagood.bench.sources.SplitSpec.source`).
Assignments are validated too (``cfg.methods = [...]``, ``cfg.options.stream_mode = "per_set"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tagood.bench.methods import CLASSIC
from tagood.bench.sources import (
    SPLIT_TYPES,
    ClutterSplit,
    DigitsSplit,
    FashionSplit,
    FolderSplit,
    ImageNetSplit,
    ListSplit,
    MnistSplit,
    ScenesSplit,
    SplitSpec,
    SplitTable,
)
from tagood.cache import STREAM_ABOVE_GB
from tagood.core.validation import (
    NonNegInt,
    PosFloat,
    PosInt,
    SchemaError,
    _finite_check,
    _Strict,
    format_errors,
    suggest,
)
from tagood.data.source import ImageSource
from tagood.detectors.options import OptionError, _spec_options, check_detector_options

__all__ = ["BACKBONES", "SPLIT_TYPES", "BenchConfig", "BenchOptions", "CLIPSpec", "ClutterSplit", "DigitsSplit",
           "EfficientNetSpec", "FashionSplit", "FolderSplit", "ImageNetSplit", "ListSplit", "MnistSplit", "PseudoOOD",
           "RAMSpec", "ScenesSplit", "SplitTable", "SplitSpec", "validate_config"]

_VALIDATED = ConfigDict(validate_assignment=True)


# -- backbone ---------------------------------------------------------------------------------------
class EfficientNetSpec(_Strict):
    """The built-in offline taggers (EfficientNet-Lite0 / Lite2 with CAM tag maps)."""

    model_config = _VALIDATED

    name: Literal["efficientnet-lite0", "efficientnet-lite2"] = Field("efficientnet-lite0", description="the tagger")
    engine: Literal["auto", "onnx", "torch"] | None = Field(None, description="inference engine (default auto: onnx on the CPU)")
    batch_size: PosInt | None = Field(None, description="forward batch size")
    num_threads: PosInt | None = Field(None, description="CPU threads of the engine")
    top_k_tags: PosInt | None = Field(None, description="tags (with their attention maps) stored per image")
    cache_dir: str | None = Field(None, description="where its ONNX export is kept (default $TAGOOD_HOME)")


class RAMSpec(_Strict):
    """Recognize Anything (RAM / RAM++) as the tagger."""

    model_config = _VALIDATED

    name: Literal["ram"] = Field(description="the tagger")
    checkpoint: str = Field(description="the official .pth or a `tagood convert ram` folder")
    tag_list: str | None = Field(None, description="ram_tag_list.txt (not needed for a converted folder)")
    thresholds: str | None = Field(None, description="ram_tag_list_threshold.txt, the per-tag thresholds")
    image_size: PosInt | None = Field(None, description="input resolution (default 384)")
    head_heads: PosInt | None = Field(None, description="attention heads of the tagging head")
    batch_size: PosInt | None = Field(None, description="forward batch size")
    top_k_tags: PosInt | None = Field(None, description="tags (with their attention maps) stored per image")
    attention_layer: NonNegInt | None = Field(None, description="the cross-attention layer that gives the tag attention "
                                                                "(public code: the first, 0)")
    candidate_tags: list[NonNegInt] | None = Field(None, description="tag ids to keep attention maps for")
    resize: Literal["square", "crop"] | None = Field(None, description="square (resize) or crop (resize the short side, "
                                                                       "centre crop)")
    cross_attention: bool | None = Field(None, description="keep the cross-attention maps of the tags")


class CLIPSpec(_Strict):
    """A dense CLIP tagger."""

    model_config = _VALIDATED

    name: Literal["clip"] = Field(description="the tagger")
    path: str = Field(description="a Hugging Face CLIP folder (safetensors) or an open_clip file")
    vocabulary: str | list[str] | None = Field(None, description="tag names: a file, one a line, or an array "
                                                                 "(default: the 1000 ImageNet classes)")
    templates: list[str] | None = Field(None, description="prompt templates such as 'a photo of a {}.'")
    arch: str | None = Field(None, description="the open_clip architecture of an open_clip file")
    batch_size: PosInt | None = Field(None, description="forward batch size")
    top_k_tags: PosInt | None = Field(None, description="tags (with their attention maps) stored per image")
    dense: Literal["value", "plain"] | None = Field(None, description="dense patch embeddings: value (value-value "
                                                                      "attention) or plain")


class SyntheticSpec(_Strict):
    """The synthetic RAM-shaped tagger of rehearsals and tests (:mod:`tagood.backbones.synthetic`): reads
    ``synthetic`` splits only, never real images."""

    model_config = _VALIDATED

    name: Literal["synthetic"] = Field(description="the tagger")
    tokens: PosInt | None = Field(None, description="tokens per image (RAM: 145)")
    width: PosInt | None = Field(None, description="token and feature width")
    tags: PosInt | None = Field(None, description="number of tags (RAM: 4585)")
    top_k_tags: PosInt | None = Field(None, description="tags (with their attention maps) stored per image")
    blocks: PosInt | None = Field(None, description="block norms per image")
    separation: float | None = Field(None, ge=0, le=1, description="how far the OOD clusters are from the IND classes")
    noise: float | None = Field(None, ge=0, description="the tokens' noise level")
    seed: NonNegInt | None = Field(None, description="seeds the centres, tag embeddings and noise banks")
    batch_size: PosInt | None = Field(None, description="forward batch size")


#: the backbone models by name
BACKBONES: dict[str, type[_Strict]] = {"efficientnet-lite0": EfficientNetSpec, "efficientnet-lite2": EfficientNetSpec,
                                       "ram": RAMSpec, "clip": CLIPSpec, "synthetic": SyntheticSpec}
_DEFAULT_BACKBONE: str = EfficientNetSpec.model_fields["name"].default


def _backbone_tag(v: Any) -> str | None:
    n = v.get("name", _DEFAULT_BACKBONE) if isinstance(v, Mapping) else getattr(v, "name", None)
    if n not in BACKBONES:
        return None
    return "efficientnet" if n.startswith("efficientnet") else n


def _check_backbone(v: Any) -> Any:
    if isinstance(v, (EfficientNetSpec, RAMSpec, CLIPSpec, SyntheticSpec)):
        return v
    if not isinstance(v, Mapping):
        raise PydanticCustomError("backbone", "[backbone] is a table with 'name' = one of {names}",
                                  {"names": ", ".join(BACKBONES)})
    n = v.get("name", _DEFAULT_BACKBONE)
    if n not in BACKBONES:
        raise PydanticCustomError("backbone", "unknown backbone{hint}; use one of {names}",
                                  {"hint": suggest(str(n), BACKBONES) if isinstance(n, str) else "",
                                   "names": ", ".join(BACKBONES)})
    return v


#: the ``[backbone]`` table: validated into the model its ``name`` names
Backbone = Annotated[Annotated[EfficientNetSpec, Tag("efficientnet")] | Annotated[RAMSpec, Tag("ram")]
                     | Annotated[CLIPSpec, Tag("clip")] | Annotated[SyntheticSpec, Tag("synthetic")],
                     Discriminator(_backbone_tag), BeforeValidator(_check_backbone)]


# -- pseudo-OOD and options -------------------------------------------------------------------------
class PseudoOOD(_Strict):
    """``[pseudo_ood]``: jigsaw-shuffled images of one split; FeatureNorm picks its block on them."""

    model_config = _VALIDATED

    type: Literal["jigsaw"] = Field("jigsaw", description="the only kind: jigsaw-shuffled images")
    of: str = Field("train", description="which split to shuffle: train, test or an OOD set's name")
    n: PosInt = Field(600, description="how many images (at most the split's size)")

    def source(self, of: ImageSource, seed: int = 0) -> ImageSource:
        """The pseudo-OOD images: a seeded subsample of ``of`` (``n``, at most all of it), jigsaw-shuffled.

        Args:
            of: the source of the split named by ``of`` (:meth:`tagood.bench.sources.SplitSpec.source`).
            seed: seeds the subsample and the shuffles (the benchmark's ``seed``).

        Returns:
            A :class:`tagood.data.JigsawSource`, e.g. to extract ``Context.pseudo_ood`` for FeatureNorm.
        """
        from tagood.data import JigsawSource, subsample

        return JigsawSource(subsample(of, min(self.n, len(of)), seed=seed), seed=seed)


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
    """A number of GiB; ``none`` / ``never`` / a negative number / ``None``: ``"never"``."""
    if v is None or (isinstance(v, str) and v.lower() in ("none", "never")):
        return "never"
    _finite_check(v)
    if not isinstance(v, (int, float)):
        raise PydanticCustomError("stream_above_gb", "must be a number of GiB, or 'never'")
    return "never" if v < 0 else float(v)


MethodSpec = Annotated[str, BeforeValidator(_method_spec)]


class BenchOptions(_Strict):
    """``[options]`` of a benchmark config (and of the built-in ones)."""

    model_config = _VALIDATED

    method_defaults: Annotated[dict[str, dict[str, Any]], BeforeValidator(_method_defaults)] = Field(
        default_factory=dict, description="default options per method, [options.method_defaults.<method>] "
                                          "(a spec's own options win: 'knn[k=10]')")
    stream_above_gb: Annotated[float | Literal["never"], BeforeValidator(_stream_above)] = Field(
        STREAM_ABOVE_GB, description="stream tokens / tag maps from the cache when float32 would exceed this many GiB "
                                     "(0 = always; -1 or 'never' = never)")
    shard_size: PosInt | None = Field(None, description="images per feature-cache shard (default: the cache's)")
    dual_encoder: dict[str, Any] | None = Field(None, description="the vision-language methods' encoder, e.g. "
                                                                  "{name = 'clip', path = DIR} (default: the offline "
                                                                  "EfficientNet-Lite0 + MiniLM stand-in)")
    ood_groups: dict[str, list[str]] | None = Field(None, description="extra average rows: row name -> the OOD sets it "
                                                                      "averages")
    stream_id_ood_ratio: PosFloat | None = Field(None, description="test-time methods (adaneg): IND:OOD ratio of their "
                                                                   "seeded test stream (default: every sample)")
    stream_mode: Literal["joint", "per_set"] = Field("joint", description="test-time methods: one stream of IND test and "
                                                                          "all OOD sets (joint), or one per OOD set")


# -- the config ---------------------------------------------------------------------------------------
class BenchConfig(_Strict):
    """A benchmark: the IND train and test splits, the OOD sets, the backbone, the detectors and the run options.

    The one declaration of a config file's keys (``tagood bench CONFIG.toml``) and the object
    :func:`tagood.bench.runner.run` reads. Relative paths in its splits are taken from :attr:`base_dir`
    (a config file's folder; pass ``base_dir=`` when building one in Python, default: the working directory).

    Example:
        >>> cfg = BenchConfig(name="mine", train={"type": "folder", "root": "train"},
        ...                   test={"type": "folder", "root": "test"}, ood={"far": {"type": "folder", "root": "ood"}},
        ...                   methods=["msp", "knn[k=5]"])
        >>> cfg.train.root, cfg.pseudo_ood.n, cfg.options.stream_mode
        ('train', 600, 'joint')
    """

    model_config = _VALIDATED

    name: str = Field(description="the run's name in results.json / results.md (in a file: default the file's name)")
    benchmark: str | None = Field(None, description="start from this built-in benchmark (scenes, fashion, fashion-clutter); "
                                                    "the file's other keys override its keys")
    quick: bool = Field(False, description="with benchmark: its small CI-sized variant")
    methods: list[MethodSpec] = Field(default_factory=lambda: list(CLASSIC), min_length=1,
                                      description="detectors to run, with options in brackets: 'knn[k=50]' "
                                                  "(`tagood methods` lists them; default: the classic baselines)")
    backbone: Backbone = Field(default_factory=EfficientNetSpec, description="[backbone]: the tagger / feature extractor "
                                                                             "(default: efficientnet-lite0, built in)")
    seed: NonNegInt = Field(0, description="seeds subsampling, training and the pseudo-OOD split")
    batch_size: PosInt = Field(64, description="images per extraction batch")
    train: SplitTable = Field(description="[train]: the IND training split (labelled)")
    test: SplitTable = Field(description="[test]: the IND test split")
    ood: dict[str, SplitTable] = Field(min_length=1, description="[ood.<name>]: one table per OOD set")
    pseudo_ood: PseudoOOD | None = Field(default_factory=PseudoOOD, description="[pseudo_ood]: the pseudo-OOD split "
                                                                                "(Python: None for none)")
    options: BenchOptions = Field(default_factory=BenchOptions, description="[options]: run options")

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)

    def __init__(self, /, base_dir: str | Path | None = None, **data: Any) -> None:
        super().__init__(**data)
        if base_dir is not None:
            self._base_dir = Path(base_dir)

    @property
    def base_dir(self) -> Path:
        """The folder relative paths of the splits are taken from."""
        return self._base_dir

    @base_dir.setter
    def base_dir(self, value: str | Path) -> None:
        self._base_dir = Path(value)

    @model_validator(mode="after")
    def _methods_once(self) -> BenchConfig:
        from tagood.detectors.registry import parse_name

        seen: set[str] = set()
        for m in self.methods:
            base, opts = parse_name(m)
            key = repr((base, sorted(opts.items())))
            if key in seen:
                raise PydanticCustomError("methods_twice", "methods names {spec} more than once; name each method (with "
                                          "its options) once", {"spec": m})
            seen.add(key)
        return self

    @model_validator(mode="after")
    def _pseudo_of(self) -> BenchConfig:
        if self.pseudo_ood is not None:
            splits = ["train", "test", *self.ood]
            if self.pseudo_ood.of not in splits:
                raise PydanticCustomError("pseudo_of", "pseudo_ood.of must name a split: {splits}", {"splits": ", ".join(splits)})
        return self

    def splits(self) -> dict[str, SplitSpec]:
        """``train``, ``test`` and every OOD set, by name, in that order."""
        return {"train": self.train, "test": self.test, **self.ood}

    def backbone_spec(self) -> dict[str, Any]:
        """The backbone as the keyword table :func:`tagood.backbones.factory.build_backbone` takes (given keys only)."""
        return self.backbone.model_dump(exclude_none=True)

    def to_json(self) -> dict[str, Any]:
        """The config as JSON values (recorded in results.json ``meta.config``; keys left unset are left out)."""
        d = self.model_dump(mode="json", exclude_none=True)
        d.setdefault("pseudo_ood", None)
        return d


def validate_config(data: Mapping[str, Any], path: str | Path, base_dir: str | Path | None = None) -> BenchConfig:
    """Validate a benchmark config read from ``path`` (after a ``benchmark = ...`` base is merged in).

    Args:
        data: the file's tables and keys.
        path: the file, named by every error message.
        base_dir: where relative paths are taken from (default: ``path``'s folder).

    Returns:
        The :class:`BenchConfig` the runner reads.

    Raises:
        SchemaError: naming the file and each bad key (with a suggestion for a misspelt one), never quoting a value;
            method specs and ``options.method_defaults`` are checked against each detector's options.
    """
    try:
        cfg = BenchConfig.model_validate(dict(data))
    except ValidationError as e:
        raise SchemaError(format_errors(e, data, str(path), "See docs/guides/bench-config.md for the keys")) from None
    cfg.base_dir = Path(base_dir) if base_dir is not None else Path(path).parent.resolve()
    return cfg
