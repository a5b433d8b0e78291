"""Schemas at the edge: what a benchmark config, a detector's options and a saved detector may hold.

Every value that comes from a user -- a TOML benchmark config (:func:`validate_config`), the options of a
method spec such as ``knn[k=50]`` (:func:`check_detector_options`) or the ``tagood.json`` written by
``tagood fit`` (:func:`validate_detector_meta`) -- is checked here, once, against one declaration
(pydantic v2 models), before any image is decoded or any feature extracted.

* **Detector options.** :data:`DETECTOR_OPTIONS` maps every registered detector to one model of its
  options: type and range per option (``knn[k=0]``, ``knn[k=2.7]``, ``react[percentile=150]``,
  ``ash[percentile=100]``, ``tagood[tau=nan]``, ``epochs=-2`` are refused). The fields of each model are
  exactly the parameters of the detector's ``__init__`` chain (:func:`signature_options`); a test checks
  that, so a new option cannot be left without a declaration. A detector registered by a user without an
  entry here is checked against its signature only (unknown options, annotated types).
* **Benchmark configs.** :class:`ConfigModel`: every top-level key, every split ``type`` with its own keys,
  ``backbone``, ``pseudo_ood`` and ``options`` (``options.method_defaults`` goes through the detector
  schemas too).
* **Saved detectors.** :class:`DetectorMeta`: ``tagood.json`` (a finite ``threshold``, the backbone
  record, the no-tag rule, ...).

Unknown keys are errors everywhere, with a "did you mean" suggestion (:func:`suggest`). Messages name
the file and the key, and never quote the contents of a file: a bad value read from a file is described
by its type only (values typed on the command line, such as a method spec, are quoted).

Scores of every detector are OOD scores: higher = more OOD (DESIGN.md section 3); nothing here changes a
score, it only refuses settings that cannot give one.
"""

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

__all__ = ["ConfigModel", "DETECTOR_OPTIONS", "DetectorMeta", "OptionError", "SchemaError", "check_detector_options",
           "signature_options", "suggest", "validate_config", "validate_detector_meta"]


class SchemaError(ValueError):
    """A file (config, ``tagood.json``) does not follow its schema; the message names the file and the key."""


class OptionError(ValueError):
    """A detector option is unknown, of the wrong type or out of range; the message names the detector and option."""


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` (difflib ratio >= 0.6), else ``''``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# -- value types ------------------------------------------------------------------------------------
def _not_bool(v: Any) -> Any:
    """true/false is not a number (pydantic's lax mode would read True as 1)."""
    if isinstance(v, bool):
        raise PydanticCustomError("bool_not_number", "true/false is not a number")
    return v


def _finite_check(v: Any) -> Any:
    v = _not_bool(v)
    if isinstance(v, (int, float)) and not math.isfinite(float(v)):
        raise PydanticCustomError("not_finite", "must be a finite number, not NaN or infinity")
    return v


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_finite_check)]
PosInt = Annotated[int, BeforeValidator(_not_bool), Field(ge=1)]
NonNegInt = Annotated[int, BeforeValidator(_not_bool), Field(ge=0)]
PosFloat = Annotated[float, BeforeValidator(_finite_check), Field(gt=0)]
NonNegFloat = Annotated[float, BeforeValidator(_finite_check), Field(ge=0)]
Fraction = Annotated[float, BeforeValidator(_finite_check), Field(ge=0, le=1)]
OpenFraction = Annotated[float, BeforeValidator(_finite_check), Field(gt=0, le=1)]
Percentile = Annotated[float, BeforeValidator(_finite_check), Field(ge=0, le=100)]
PathLike = Union[str, Path]


def _positive_std(v: Any) -> Any:
    """ODIN's ``pixel_std``: one positive number or one per channel."""
    import numpy as np

    _not_bool(v)
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise PydanticCustomError("pixel_std", "must be a positive number or a list of positive numbers") from None
    if a.ndim > 1 or a.size == 0 or not np.all(np.isfinite(a)) or not np.all(a > 0):
        raise PydanticCustomError("pixel_std", "must be a positive number or a list of positive numbers")
    return v


PixelStd = Annotated[Any, BeforeValidator(_positive_std)]


class _Strict(BaseModel):
    """Unknown keys are errors with a suggestion; values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_default=False, arbitrary_types_allowed=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            for k in data:
                if k not in known:
                    raise PydanticCustomError("unknown_key", "unknown key '{key}'{hint}; allowed keys: {known}",
                                              {"key": str(k), "hint": suggest(str(k), known), "known": ", ".join(sorted(known))})
        return data


# -- detector options -------------------------------------------------------------------------------
# Every field defaults to None and only the options a user gives are validated (``model_fields_set``): the
# defaults live in the detectors' signatures, one place.
class _Opts(_Strict):
    pass


class _NoOpts(_Opts):
    """MSP, MaxLogit, Mahalanobis: no options."""


class EnergyOpts(_Opts):
    temperature: PosFloat = None  # type: ignore[assignment]


class OdinOpts(_Opts):
    temperature: PosFloat = None  # type: ignore[assignment]
    epsilon: NonNegFloat = None  # type: ignore[assignment]
    pixel_std: PixelStd | None = None
    batch_size: PosInt = None  # type: ignore[assignment]


class ReactOpts(_Opts):
    #: clip at this percentile of the training activations: (0, 100]
    percentile: Annotated[float, BeforeValidator(_finite_check), Field(gt=0, le=100)] = None  # type: ignore[assignment]


class AshOpts(_Opts):
    #: prune this percentile of the activations: [0, 100) -- 100 would prune every activation
    percentile: Annotated[float, BeforeValidator(_finite_check), Field(ge=0, lt=100)] = None  # type: ignore[assignment]
    variant: Literal["s", "b", "p"] = None  # type: ignore[assignment]


class LHActOpts(_Opts):
    low_percentile: Percentile = None  # type: ignore[assignment]
    high_percentile: Percentile = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _order(self) -> "LHActOpts":
        lo, hi = self.low_percentile, self.high_percentile
        if lo is not None and hi is not None and not lo < hi:
            raise PydanticCustomError("order", "low_percentile must be below high_percentile")
        return self


class FeatureNormOpts(_Opts):
    block: NonNegInt | None = None


class KnnOpts(_Opts):
    k: PosInt = None  # type: ignore[assignment]
    #: fraction of the training features kept in the bank: (0, 1]
    alpha: OpenFraction = None  # type: ignore[assignment]


class VimOpts(_Opts):
    dim: PosInt | None = None


class TrainOpts(_Opts):
    """The projector's training options (``tagood.tagood.train.TrainConfig``)."""

    dim: PosInt = None  # type: ignore[assignment]
    depth: PosInt = None  # type: ignore[assignment]
    heads: PosInt = None  # type: ignore[assignment]
    mlp: PosInt = None  # type: ignore[assignment]
    dropout: Annotated[float, BeforeValidator(_finite_check), Field(ge=0, lt=1)] = None  # type: ignore[assignment]
    epochs: PosInt = None  # type: ignore[assignment]
    batch_size: PosInt = None  # type: ignore[assignment]
    lr: PosFloat = None  # type: ignore[assignment]
    weight_decay: NonNegFloat = None  # type: ignore[assignment]
    ce_weight: NonNegFloat = None  # type: ignore[assignment]
    mse_weight: NonNegFloat = None  # type: ignore[assignment]
    momentum: Fraction = None  # type: ignore[assignment]
    min_lr: NonNegFloat = None  # type: ignore[assignment]
    seed: NonNegInt = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> "TrainOpts":
        if self.dim is not None and self.heads is not None and self.dim % self.heads:
            raise PydanticCustomError("heads", "dim must be a multiple of heads")
        return self


class TagBaseOpts(_Opts):
    """Options common to TagScore / CS / (CE)+CS / TagOOD (``tagood.tagood.detector._TagBase``)."""

    #: decomposition threshold on min-max-normalised attention (<= 0 keeps every token; >= 1 would keep none)
    tau: Annotated[float, BeforeValidator(_finite_check), Field(lt=1)] = None  # type: ignore[assignment]
    tag_threshold: Fraction | None = None
    tag_top_k: PosInt = None  # type: ignore[assignment]
    per_class: Union[Literal["auto"], PosInt] = None  # type: ignore[assignment]
    coverage: OpenFraction = None  # type: ignore[assignment]
    vocabulary: PathLike | None = None
    no_tag: Literal["auto", "ood", "fallback"] = None  # type: ignore[assignment]
    vocab: Literal["auto", "frequent", "specific"] = None  # type: ignore[assignment]


class TagOODOpts(TagBaseOpts, TrainOpts):
    score: Literal["cosine", "chunk", "euclid", "kl"] = None  # type: ignore[assignment]
    test_tokens: Literal["object", "all"] | None = None
    tags: Literal["pred", "gt"] = None  # type: ignore[assignment]
    preset: Literal["small", "paper"] = None  # type: ignore[assignment]


class VLMOpts(_Opts):
    """Options of every vision-language detector (``tagood.vlm.base.VLMDetector``)."""

    template: str = None  # type: ignore[assignment]
    templates: str | list[str] | None = None


class MCMOpts(VLMOpts):
    tau: PosFloat = None  # type: ignore[assignment]


class GLMCMOpts(MCMOpts):
    tau_local: PosFloat = None  # type: ignore[assignment]
    lam: NonNegFloat = None  # type: ignore[assignment]


class NegLabelOpts(VLMOpts):
    n_neg: PosInt = None  # type: ignore[assignment]
    #: the percentile of WordNet candidates kept as negatives: (0, 1]
    eta: OpenFraction = None  # type: ignore[assignment]
    tau: PosFloat = None  # type: ignore[assignment]
    ngroup: PosInt = None  # type: ignore[assignment]
    corpus: PathLike | list[str] | None = None
    max_candidates: PosInt | None = None
    neg_words: list[str] | None = None
    seed: NonNegInt = None  # type: ignore[assignment]


class CSPOpts(NegLabelOpts):
    ratio: OpenFraction = None  # type: ignore[assignment]
    #: cosine above which a candidate counts as a near-duplicate of an IND prompt; above 1 lifts the cut
    max_sim: PosFloat = None  # type: ignore[assignment]
    superclasses: list[str] | None = None
    exclude: list[str] | None = None
    nouns: list[str] | None = None
    adjectives: list[str] | None = None


class AdaNegOpts(NegLabelOpts):
    thres: Fraction = None  # type: ignore[assignment]
    gap: Fraction = None  # type: ignore[assignment]
    memleng: PosInt = None  # type: ignore[assignment]
    beta: NonNegFloat = None  # type: ignore[assignment]
    lam: NonNegFloat = None  # type: ignore[assignment]
    proxies: Literal["sample", "task"] = None  # type: ignore[assignment]
    batch_size: PosInt = None  # type: ignore[assignment]


class KRNFTOpts(VLMOpts):
    n_neg: PosInt = None  # type: ignore[assignment]
    eta: OpenFraction = None  # type: ignore[assignment]
    corpus: PathLike | list[str] | None = None
    max_candidates: PosInt | None = None
    neg_words: list[str] | None = None
    shots: PosInt | None = None
    n_crops: PosInt = None  # type: ignore[assignment]
    k_in: PosInt = None  # type: ignore[assignment]
    k_out: NonNegInt = None  # type: ignore[assignment]
    hidden: PosInt = None  # type: ignore[assignment]
    #: 0 = untrained (the meta-networks' zero-initialised last layers: plain text features), as README measures
    epochs: NonNegInt = None  # type: ignore[assignment]
    lr: PosFloat = None  # type: ignore[assignment]
    batch_size: PosInt = None  # type: ignore[assignment]
    w_out: NonNegFloat = None  # type: ignore[assignment]
    w_kr: NonNegFloat = None  # type: ignore[assignment]
    score_batch: PosInt = None  # type: ignore[assignment]
    seed: NonNegInt = None  # type: ignore[assignment]
    device: str | None = None


class LoCoOpOpts(VLMOpts):
    n_ctx: PosInt = None  # type: ignore[assignment]
    lam: NonNegFloat = None  # type: ignore[assignment]
    top_k: PosInt | None = None
    shots: PosInt | None = None
    epochs: NonNegInt = None  # type: ignore[assignment]  # 0 = the initial context, untrained
    lr: PosFloat = None  # type: ignore[assignment]
    batch_size: PosInt = None  # type: ignore[assignment]
    score: Literal["glmcm", "mcm"] = None  # type: ignore[assignment]
    context: Literal["auto", "tokens", "residual"] = None  # type: ignore[assignment]
    seed: NonNegInt = None  # type: ignore[assignment]


#: One option model per registered detector. ``tests/test_schemas.py`` checks that the fields of each
#: equal the detector's ``__init__`` parameters (:func:`signature_options`), both ways.
DETECTOR_OPTIONS: dict[str, type[BaseModel]] = {
    "msp": _NoOpts, "maxlogit": _NoOpts, "mahalanobis": _NoOpts, "energy": EnergyOpts, "odin": OdinOpts,
    "react": ReactOpts, "ash": AshOpts, "lhact": LHActOpts, "featurenorm": FeatureNormOpts, "knn": KnnOpts,
    "vim": VimOpts, "tagscore": TagBaseOpts, "cs": TagOODOpts, "ce+cs": TagOODOpts, "tagood": TagOODOpts,
    "mcm": MCMOpts, "glmcm": GLMCMOpts, "neglabel": NegLabelOpts, "csp": CSPOpts, "adaneg": AdaNegOpts,
    "krnft": KRNFTOpts, "locoop": LoCoOpOpts,
}


def _is_detector_base(klass: type) -> bool:
    """``klass`` is ``tagood.detectors.base.Detector``, recognised by name: the detector registry imports this
    module, so importing it back would be a cycle."""
    return klass.__module__ == "tagood.detectors.base" and klass.__qualname__ == "Detector"


def signature_options(cls: type) -> dict[str, Any]:
    """The options a detector class takes: the named parameters of each ``__init__`` along its MRO that
    passes ``**kwargs`` on (stopping at ``tagood.detectors.base.Detector``, whose ``**hparams`` only
    records them), plus the fields of ``TrainConfig`` for a detector that forwards ``**train_kw`` to it
    (TagOOD, CS, (CE)+CS). Returns ``{name: default}`` (``inspect.Parameter.empty`` when required);
    the first default met along the MRO wins."""
    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        if _is_detector_base(klass) or klass is object or "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters
        for n, p in params.items():
            if n == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            out.setdefault(n, p.default)
        var_kw = [p.name for p in params.values() if p.kind is p.VAR_KEYWORD]
        if not var_kw:
            return out
        if var_kw[0] == "train_kw":
            from dataclasses import fields

            from tagood.tagood.train import TrainConfig

            for f in fields(TrainConfig):
                out.setdefault(f.name, f.default)
    return out


def _takes_any(cls: type) -> bool:
    """True when no ``__init__`` before ``Detector`` in the MRO ends the chain without ``**kwargs``: the
    detector would record any keyword (a plugin without a schema entry)."""
    for klass in cls.__mro__:
        if _is_detector_base(klass):
            return True
        if "__init__" in vars(klass):
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                return False
    return True


def _derived_model(cls: type) -> type[BaseModel]:
    """An option model for a detector without an entry in :data:`DETECTOR_OPTIONS` (a user's plugin): its
    signature's parameters, typed from their annotations where they resolve, ``Any`` otherwise."""
    import typing

    fields: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - an unresolvable annotation: the option is then untyped
            hints = {}
        for n in inspect.signature(init).parameters:
            if n in signature_options(cls):
                fields[n] = (typing.Optional[hints[n]] if n in hints else Any, None)
    base = _Opts if not _takes_any(cls) else BaseModel
    return create_model(f"{cls.__name__}Options", __base__=base, **fields)  # type: ignore[call-overload]


def _describe(err: Mapping[str, Any]) -> str:
    """One pydantic error as words (without the input value)."""
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg[:1].lower() + msg[1:]


def _kind(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, (int, float)):
        return "a number"
    if isinstance(default, str):
        return "a word"
    return "a value"


def check_detector_options(name: str, cls: type, opts: Mapping[str, Any], quote: bool = True) -> dict[str, Any]:
    """Validate the options of detector ``name`` (class ``cls``) against :data:`DETECTOR_OPTIONS` -- before
    any extraction -- and return them with scalar values in their declared type (``k=2.0`` -> ``2``).
    Raises :class:`OptionError` (a ``ValueError``) naming the detector, the option, the value and the
    accepted range; an unknown option gets a "did you mean" suggestion. ``quote=False`` (options read from
    a file) names the value's type instead of quoting it. Scores stay higher = more OOD."""
    model = DETECTOR_OPTIONS.get(name) or _derived_model(cls)
    defaults = signature_options(cls)
    known = [k for k in defaults if k in model.model_fields] + sorted(set(model.model_fields) - set(defaults))
    preset = set(TrainOpts.model_fields) - set(TagBaseOpts.model_fields) if issubclass(model, TrainOpts) else set()
    strict = issubclass(model, _Strict)
    unknown = [k for k in opts if k not in model.model_fields] if strict else []
    if unknown:
        what = "; ".join(f"detector '{name}' has no option {k}{suggest(k, known)}" for k in unknown)
        raise OptionError(f"unknown {cls.__name__} options {unknown}: {what}; its options: {', '.join(known) or 'none'}")
    try:
        m = model.model_validate(dict(opts))
    except ValidationError as e:
        parts = []
        for err in e.errors(include_url=False, include_input=False):
            loc = [str(x) for x in err.get("loc", ()) if isinstance(x, str)]
            key = loc[0] if loc and loc[0] in opts else None
            if key is None:  # a check across options (lhact's order, dim vs heads)
                got = ", ".join(f"{k}={v!r}" if quote else k for k, v in opts.items())
                parts.append(f"detector '{name}': {_describe(err)} (got {got})")
                continue
            d = defaults.get(key, inspect.Parameter.empty)
            dtxt = (" (default: set by the preset)" if key in preset else
                    "" if d is inspect.Parameter.empty else f" (default {d!r})")
            got = repr(opts[key]) if quote else _type_word(opts[key])
            parts.append(f"detector '{name}': option {key} is {_kind(d)}{dtxt}, got {got}: {_describe(err)}")
        raise OptionError("; ".join(dict.fromkeys(parts)) + _example(name, e, defaults, preset)) from None
    out = dict(opts)
    for k in m.model_fields_set:
        v = getattr(m, k)
        if isinstance(v, (bool, int, float, str)) and not isinstance(opts[k], Path):
            out[k] = v
    return out


def _example(name: str, e: ValidationError, defaults: Mapping[str, Any], preset: set[str]) -> str:
    """``; e.g. knn[k=50]``: the first bad option at its default, when it has a plain one."""
    for err in e.errors(include_url=False, include_input=False):
        key = next((x for x in err.get("loc", ()) if isinstance(x, str)), None)
        v = defaults.get(key, None) if key and key not in preset else None
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            return f"; e.g. {name}[{key}={v}]"
    return ""


def _spec_options(spec: str) -> None:
    """Check one method spec (``name[key=value,...]``): known detector (with a suggestion) and valid options."""
    from tagood.detectors.registry import available, get_class, parse_name

    base, opts = parse_name(spec)
    names = available()
    if base not in names:
        raise PydanticCustomError("unknown_method", "unknown detector '{name}'{hint}; available: {names}",
                                  {"name": base, "hint": suggest(base, names), "names": ", ".join(names)})
    try:
        check_detector_options(base, get_class(base), opts, quote=False)
    except OptionError as e:
        raise PydanticCustomError("method_option", "{msg}", {"msg": str(e)}) from None


# -- benchmark config -------------------------------------------------------------------------------
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


_TYPE_WORDS = {str: "text", int: "an integer", float: "a number", bool: "true or false", dict: "a table", list: "an array",
               type(None): "null"}


def _type_word(v: Any) -> str:
    for t, w in _TYPE_WORDS.items():
        if type(v) is t:
            return w
    return type(v).__name__


def _loc_value(data: Any, loc: Sequence[Any]) -> tuple[bool, Any]:
    cur = data
    for x in loc:
        if isinstance(cur, Mapping) and x in cur:
            cur = cur[x]
        elif isinstance(cur, list) and isinstance(x, int) and 0 <= x < len(cur):
            cur = cur[x]
        else:
            return False, None
    return True, cur


def _key_path(data: Any, loc: Sequence[Any]) -> list[Any]:
    """The loc without pydantic's union tags (``('train', 'folder', 'root')`` -> ``['train', 'root']``)."""
    out: list[Any] = []
    cur = data
    for x in loc:
        if isinstance(cur, Mapping) and x in cur:
            out.append(x)
            cur = cur[x]
        elif isinstance(cur, list) and isinstance(x, int) and 0 <= x < len(cur):
            out.append(x)
            cur = cur[x]
        elif isinstance(x, str) and x in _TAGS:
            continue  # a union tag or a validator's name
        else:
            out.append(x)
    return out


_TAGS = frozenset({"efficientnet", "ram", "clip", *SPLIT_TYPES, "function-before", "function-after"})


def _key_text(path: list[Any]) -> str:
    s = ""
    for x in path:
        s += f"[{x}]" if isinstance(x, int) else (("." if s else "") + str(x))
    return s or "(top level)"


#: errors whose message says all: the type of the value is not added
_NO_GOT = frozenset({"unknown_key", "method_option", "unknown_method", "split_type", "missing_type", "backbone", "split",
                     "method_defaults", "pseudo_of", "order", "heads"})


def format_errors(e: ValidationError, data: Any, where: str, fix: str) -> str:
    """One message per error: ``<where>: key <k>: <what is wrong>, got <type>`` -- the value itself is
    never quoted (it was read from a file)."""
    lines = []
    for err in e.errors(include_url=False, include_input=False):
        loc = list(err.get("loc", ()))
        path = _key_path(data, loc)
        typ = err.get("type", "")
        if typ == "missing":
            table = len(path) == 1 and path[0] in ("train", "test", "ood")
            lines.append(f"{where}: missing [{path[0]}] section" if table else f"{where}: missing key '{_key_text(path)}'")
            continue
        if typ.startswith("named_"):  # the message names its key
            lines.append(f"{where}: {_describe(err)}")
            continue
        if typ == "unknown_key":
            ctx = err.get("ctx") or {}
            lines.append(f"{where}: unknown key '{_key_text([*path, ctx.get('key', '?')])}'{ctx.get('hint', '')}; "
                         f"allowed {'at the top level' if not path else 'in ' + _key_text(path)}: {ctx.get('known', '')}")
            continue
        found, val = _loc_value(data, path)
        got = f" (got {_type_word(val)})" if found and typ not in _NO_GOT else ""
        lines.append(f"{where}: {_describe(err)}" if not path else f"{where}: key '{_key_text(path)}': {_describe(err)}{got}")
    lines = list(dict.fromkeys(lines))
    return "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "") + (f". {fix}" if fix else "")


def validate_config(data: Mapping[str, Any], path: str | Path) -> ConfigModel:
    """Validate a benchmark config read from ``path`` (after a ``benchmark = ...`` base is merged in).
    Raises :class:`SchemaError` naming the file and each bad key (with a suggestion for a misspelt one);
    method specs and ``options.method_defaults`` are checked against :data:`DETECTOR_OPTIONS`."""
    try:
        return ConfigModel.model_validate(dict(data))
    except ValidationError as e:
        raise SchemaError(format_errors(e, data, str(path), "See README 'Your own benchmark' for the keys")) from None


# -- saved detector (tagood.json) -------------------------------------------------------------------
def _threshold(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise PydanticCustomError("named_threshold", "'threshold' must be a finite number (got {got})", {"got": _type_word(v)
                                  if not isinstance(v, float) else ("NaN" if v != v else "infinity")})
    return v


class BackboneRecord(_Strict):
    name: str
    id: str
    weights_hash: str
    spec: dict[str, Any] | None = None


def _saved_method(v: Any) -> Any:
    """The saved ``method`` is a spec of a registered detector (not quoted back: it was read from a file)."""
    from tagood.detectors.registry import available, parse_name

    try:
        base, _ = parse_name(v) if isinstance(v, str) else ("", {})
    except ValueError:
        base = ""
    if base not in available():
        raise PydanticCustomError("named_method", "'method' must name a registered detector such as 'tagood' or "
                                  "'tagood[tau=0.25]' (got {got})", {"got": "another value" if isinstance(v, str) else _type_word(v)})
    return v


class SavedVocabulary(_Strict):
    """How a tag-based detector's IND vocabulary was chosen (``tagood fit``): the rule (``frequent`` /
    ``specific`` / ``file``), tags per class, and the IND-training no-tag fraction the cross-validation saw."""

    rule: Literal["frequent", "specific", "file"]
    tags_per_class: NonNegInt
    cv_no_tag_fraction: Fraction


class DetectorMeta(_Strict):
    """``tagood.json`` of a detector saved by ``tagood fit`` (:func:`tagood.fitscore.fit_folder`).
    ``threshold`` is a finite OOD-score threshold (higher = more OOD: ``score > threshold`` is OOD)."""

    method: Annotated[str, BeforeValidator(_saved_method)]
    backbone: BackboneRecord
    dual_encoder: dict[str, Any] | None = None
    classes: list[str] = Field(min_length=1)
    threshold: Annotated[float, BeforeValidator(_threshold)]
    no_tag_rule: Literal["ood", "fallback"] | None = None
    target_tpr: OpenFraction | None = None
    heldout_tpr: Fraction | None = None
    heldout_no_tag_fraction: Fraction | None = None
    threshold_degenerate: bool | None = None
    warnings: list[str] | None = None
    n_train: NonNegInt | None = None
    n_heldout: NonNegInt | None = None
    streamed: list[str] | None = None
    failed_images: list[dict[str, Any]] | None = None
    vocabulary: SavedVocabulary | None = None


def validate_detector_meta(data: Any, path: str | Path) -> DetectorMeta:
    """Validate the ``tagood.json`` read from ``path``; :class:`SchemaError` names the file and key, never
    its contents."""
    if not isinstance(data, Mapping):
        raise SchemaError(f"{path}: must hold a JSON object (got {_type_word(data)}); re-run `tagood fit` to save the detector again")
    try:
        return DetectorMeta.model_validate(dict(data))
    except ValidationError as e:
        raise SchemaError(format_errors(e, data, str(path), "Re-run `tagood fit` to save the detector again")) from None
