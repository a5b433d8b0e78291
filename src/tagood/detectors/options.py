"""Detector options, declared once: each detector class holds a pydantic model ``Options`` (a
:class:`DetectorOptions`) with every option's type, range, default and a one-line description.

``Detector.__init__(**options)``, :func:`tagood.detectors.create` (``name[key=value,...]`` specs), a TOML
config's methods and ``options.method_defaults`` (:func:`check_detector_options`), ``tagood methods`` and the
docs' method tables (:func:`describe`) all read that one model. A bad option is an :class:`OptionError` (a
:class:`tagood.errors.ConfigError`) naming the detector, the option, its default and the accepted range, before
any work is done. Detector scores: higher = more OOD.

Example:
    >>> from pydantic import Field
    >>> from tagood.core.validation import PosInt
    >>> class Options(DetectorOptions):
    ...     k: PosInt = Field(50, description="neighbour rank")
    >>> Options(k=3).k
    3
    >>> [(o.name, o.type, o.default, o.constraint) for o in describe_options(Options)]
    [('k', 'integer', 50, '>= 1')]
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined

from tagood.core.validation import _describe, _finite_check, _not_bool, _Strict, _type_word, suggest
from tagood.errors import ConfigError

__all__ = ["DetectorOptions", "OptionError", "OptionInfo", "check_detector_options", "describe",
           "describe_options", "validate_options"]


class OptionError(ConfigError):
    """A detector option is unknown, of the wrong type or out of range; the message names the detector and option."""


class DetectorOptions(_Strict):
    """Base of every detector's ``Options`` model: unknown keys are errors (with a "did you mean"), an instance is
    frozen, defaults are validated too. A numeric field must use a value type of :mod:`tagood.core.validation`
    (``Int``, ``Float``, ``PosInt``, ``Fraction``, ...): those refuse true/false as a number and NaN / infinity --
    a plain ``int`` or ``float`` field is refused when the class is defined. Cross-field rules are
    ``model_validator(mode="after")`` methods raising ``PydanticCustomError``."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, arbitrary_types_allowed=True,
                              populate_by_name=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, f in cls.model_fields.items():
            if _numeric(f.annotation) and not _guarded(f):
                raise TypeError(f"{cls.__qualname__}.{name}: declare numbers with the value types of tagood.core.validation "
                                f"(Int, Float, PosInt, Fraction, ...), which refuse true/false and NaN")


def _unwrap(ann: Any) -> tuple[list[Any], bool]:
    """The member types of ``ann`` without ``Annotated`` wrappers and ``None``, and whether ``None`` is allowed."""
    origin = get_origin(ann)
    if origin is Annotated:
        return _unwrap(get_args(ann)[0])
    if origin in (Union, types.UnionType):
        out: list[Any] = []
        optional = False
        for a in get_args(ann):
            if a is type(None):
                optional = True
                continue
            sub, opt = _unwrap(a)
            out += sub
            optional = optional or opt
        return out, optional
    return [ann], False


def _numeric(ann: Any) -> bool:
    return any(t in (int, float) for t in _unwrap(ann)[0])


def _metadata(f: FieldInfo) -> list[Any]:
    """Every metadata item of a field: its own and those of the ``Annotated`` types in its annotation."""
    out = list(f.metadata)

    def walk(ann: Any) -> None:
        origin = get_origin(ann)
        if origin is Annotated:
            args = get_args(ann)
            for m in args[1:]:  # a Field(ge=...) inside an Annotated type stays a FieldInfo there
                out.extend(m.metadata if isinstance(m, FieldInfo) else [m])
            walk(args[0])
        elif origin in (Union, types.UnionType):
            for a in get_args(ann):
                walk(a)

    walk(f.annotation)
    return out


def _guarded(f: FieldInfo) -> bool:
    return any(isinstance(m, BeforeValidator) and m.func in (_not_bool, _finite_check) for m in _metadata(f))


# -- describing options ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptionInfo:
    """One option of a detector, as plain text for ``tagood methods`` and the docs' tables."""

    name: str
    #: the value's type in words: ``integer``, ``number``, ``text``, ``one of 's', 'b', 'p'``, ``... or none``
    type: str
    #: the default value (``None`` = none); :attr:`required` options have none
    default: Any
    #: one line: what the option does
    description: str
    #: the accepted range in words (``>= 1``, ``in (0, 1]``), or ``""``
    constraint: str = ""
    required: bool = False

    @property
    def default_text(self) -> str:
        """The default as a user writes it in a spec (``50``, ``none``, ``s``); ``required`` when there is none."""
        if self.required:
            return "required"
        return _value_text(self.default)


def _value_text(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value_text(x) for x in v) + "]"
    return str(v)


_TYPE_TEXT = {int: "integer", float: "number", str: "text", bool: "true or false", Path: "path", dict: "table"}


def _type_text(ann: Any) -> str:
    origin = get_origin(ann)
    if origin is Annotated:
        return _type_text(get_args(ann)[0])
    if origin in (Union, types.UnionType):
        args = get_args(ann)
        parts = list(dict.fromkeys(_type_text(a) for a in args if a is not type(None)))
        if "path" in parts and "text" in parts:
            parts.remove("text")
        return " or ".join(parts + (["none"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(ann))
    if origin in (list, tuple, Sequence):
        args = get_args(ann)
        return f"list of {_type_text(args[0])}" if args else "list"
    if ann is Any:
        return "any value"
    return _TYPE_TEXT.get(ann, getattr(ann, "__name__", str(ann)))


def _constraint_text(f: FieldInfo) -> str:
    lo: tuple[str, str, Any] | None = None
    hi: tuple[str, str, Any] | None = None
    for m in _metadata(f):
        if isinstance(m, annotated_types.Ge) and lo is None:
            lo = ("[", ">=", m.ge)
        elif isinstance(m, annotated_types.Gt) and lo is None:
            lo = ("(", ">", m.gt)
        elif isinstance(m, annotated_types.Le) and hi is None:
            hi = ("]", "<=", m.le)
        elif isinstance(m, annotated_types.Lt) and hi is None:
            hi = (")", "<", m.lt)
    if lo and hi:
        return f"in {lo[0]}{lo[2]}, {hi[2]}{hi[0]}"
    if lo or hi:
        b = lo or hi
        assert b is not None
        return f"{b[1]} {b[2]}"
    return ""


def describe_options(model: type[BaseModel]) -> list[OptionInfo]:
    """:class:`OptionInfo` of every field of an options model, in declaration order."""
    out = []
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        default = f.default
        required = default is PydanticUndefined
        out.append(OptionInfo(name=name, type=str(extra.get("type_text") or _type_text(f.annotation)),
                              default=None if required else default, description=" ".join((f.description or "").split()),
                              constraint=_constraint_text(f), required=required))
    return out


def describe(name_or_class: str | type) -> list[OptionInfo]:
    """Every option of a detector, with its type, default, range and description: what ``tagood methods`` lists.

    Args:
        name_or_class: a registered detector name (:func:`tagood.available`) or a detector class.

    Returns:
        One :class:`OptionInfo` per option, in declaration order (``[]`` for a detector without options).

    Raises:
        tagood.detectors.registry.UnknownDetectorError: no detector is registered under that name (a
            :class:`tagood.errors.ConfigError`).

    Example:
        >>> [(o.name, o.default_text, o.constraint) for o in describe("knn")]
        [('k', '50', '>= 1'), ('alpha', '1.0', 'in (0, 1]')]
    """
    from tagood.detectors.registry import get_class

    cls = get_class(name_or_class) if isinstance(name_or_class, str) else name_or_class
    return describe_options(options_model(cls))


# -- validating options -----------------------------------------------------------------------------------
def options_model(cls: type) -> type[DetectorOptions]:
    """The ``Options`` model a detector class declares (the base's empty model for a detector without options)."""
    model = getattr(cls, "Options", None)
    if not (isinstance(model, type) and issubclass(model, DetectorOptions)):
        raise TypeError(f"{cls.__name__}.Options must be a subclass of tagood.detectors.options.DetectorOptions")
    return model


def validate_options(cls: type, opts: Mapping[str, Any], name: str | None = None, quote: bool = True) -> DetectorOptions:
    """The ``cls.Options`` instance of ``opts``. Raises :class:`OptionError` naming detector ``name`` (default: the
    class's registered name), the option, its default and the accepted range; an unknown option gets a "did you
    mean". ``quote=False`` (options read from a file) names a bad value's type instead of quoting it."""
    name = name or str(getattr(cls, "name", cls.__name__))
    model = options_model(cls)
    known = list(model.model_fields)
    _refuse_unknown(name, cls, opts, known)
    try:
        return model.model_validate(dict(opts))
    except ValidationError as e:
        raise OptionError(_invalid_text(name, e, opts, model.model_fields, quote)) from None


def check_detector_options(name: str, cls: type, opts: Mapping[str, Any], quote: bool = True) -> dict[str, Any]:
    """Validate the options of detector ``name`` (class ``cls``) -- before any extraction -- and return them with
    scalar values in their declared type (``k=2.0`` -> ``2``). Raises :class:`OptionError` as
    :func:`validate_options` does. Detector scores stay higher = more OOD."""
    m = validate_options(cls, opts, name, quote)
    return {k: _declared(getattr(m, k), v) for k, v in opts.items()}


def _declared(value: Any, given: Any) -> Any:
    """A validated scalar in its declared type; anything else (a list, a path) as given."""
    return value if isinstance(value, (bool, int, float, str)) and not isinstance(given, Path) else given


def _refuse_unknown(name: str, cls: type, opts: Mapping[str, Any], known: Sequence[str]) -> None:
    unknown = [k for k in opts if k not in known]
    if unknown:
        what = "; ".join(f"detector '{name}' has no option {k}{suggest(k, known)}" for k in unknown)
        raise OptionError(f"unknown {cls.__name__} options {unknown}: {what}; its options: {', '.join(known) or 'none'}")


def _kind(default: Any, annotation: Any = None) -> str:
    """The kind of value an option takes, in words, from its default (or, for a default of none, its type)."""
    if default is None and annotation is not None:
        kinds = {_kind(t()) if t in (bool, int, float, str) else "a value" for t in _unwrap(annotation)[0]}
        return (kinds.pop() if len(kinds) == 1 else "a value") + " or none"
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, (int, float)):
        return "a number"
    if isinstance(default, str):
        return "a word"
    return "a value"


def _invalid_text(name: str, e: ValidationError, opts: Mapping[str, Any], fields: Mapping[str, FieldInfo], quote: bool) -> str:
    """One message for a validation error of detector ``name``'s options: each bad option with its default, then an
    example spec with the first bad option at its default."""
    defaults = {k: f.default for k, f in fields.items()}
    parts = []
    for err in e.errors(include_url=False, include_input=False):
        loc = [str(x) for x in err.get("loc", ()) if isinstance(x, str)]
        key = loc[0] if loc and (loc[0] in opts or err.get("type") == "missing") else None
        if key is None:  # a check across options (lhact's order, dim vs heads)
            got = ", ".join(f"{k}={v!r}" if quote else k for k, v in opts.items())
            parts.append(f"detector '{name}': {_describe(err)} (got {got})")
            continue
        if err.get("type") == "missing":
            parts.append(f"detector '{name}': option {key} is required")
            continue
        d = defaults.get(key, PydanticUndefined)
        dtxt = "" if d is PydanticUndefined else f" (default {d!r})"
        got = repr(opts[key]) if quote else _type_word(opts[key])
        kind = _kind(d, fields[key].annotation if key in fields else None)
        parts.append(f"detector '{name}': option {key} is {kind}{dtxt}, got {got}: {_describe(err)}")
    return "; ".join(dict.fromkeys(parts)) + _example(name, e, defaults)


def _example(name: str, e: ValidationError, defaults: Mapping[str, Any]) -> str:
    """``; e.g. knn[k=50]``: the first bad option at its default, when it has a plain one."""
    for err in e.errors(include_url=False, include_input=False):
        key = next((x for x in err.get("loc", ()) if isinstance(x, str)), None)
        v = defaults.get(key, None) if key else None
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
