"""Detector options: the one declaration of each detector's options (type, range, default), and their checks.

A method spec such as ``knn[k=50]``, keyword arguments of :func:`tagood.create` and a TOML config's
``options.method_defaults`` are all checked here before any work is done. Scores: higher = more OOD.
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

from tagood.errors import ConfigError
from tagood.core.validation import *  # noqa: F403 (split from one module; narrowed below)
from tagood.core.validation import _describe, _Strict, _finite_check, _not_bool, _type_word, format_errors


class OptionError(ConfigError):
    """A detector option is unknown, of the wrong type or out of range; the message names the detector and option."""


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
    """The projector's training options (``tagood.detectors.tagood.train.TrainConfig``)."""

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
    """Options common to TagScore / CS / (CE)+CS / TagOOD (``tagood.detectors.tagood.detector._TagBase``)."""

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
    """Options of every vision-language detector (``tagood.detectors.vlm.base.VLMDetector``)."""

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

            from tagood.detectors.tagood.train import TrainConfig

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
