"""Validation at the edge, shared by every schema: value types with their ranges, strict models whose unknown
keys are errors with a "did you mean", and one formatter that turns a pydantic error into one line naming the file
and the key (never quoting a file's contents)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tagood.errors import ConfigError


class SchemaError(ConfigError):
    """A file (config, ``tagood.json``) does not follow its schema; the message names the file and the key."""


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
PathLike = str | Path


def _positive_std(v: Any) -> float | tuple[float, ...]:
    """ODIN's ``pixel_std``: one positive number or one per channel (a float or a tuple of floats)."""
    import numpy as np

    _not_bool(v)
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise PydanticCustomError("pixel_std", "must be a positive number or a list of positive numbers") from None
    if a.ndim > 1 or a.size == 0 or not np.all(np.isfinite(a)) or not np.all(a > 0):
        raise PydanticCustomError("pixel_std", "must be a positive number or a list of positive numbers")
    return float(a) if a.ndim == 0 else tuple(float(x) for x in a)


PixelStd = Annotated[Float | tuple[Float, ...], BeforeValidator(_positive_std)]


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


#: discriminator tags pydantic puts into an error location (backbone and split types, validator kinds): not keys
_TAGS = frozenset({"efficientnet", "ram", "clip", "folder", "list", "fashion_mnist", "mnist5k", "digits", "fashion_clutter",
                   "scenes", "imagenet", "function-before", "function-after"})


def _key_text(path: list[Any]) -> str:
    s = ""
    for x in path:
        s += f"[{x}]" if isinstance(x, int) else (("." if s else "") + str(x))
    return s or "(top level)"


#: errors whose message says all: the type of the value is not added
_NO_GOT = frozenset({"unknown_key", "method_option", "unknown_method", "split_type", "missing_type", "backbone", "split",
                     "method_defaults", "pseudo_of", "order", "heads"})


def _describe(err: Mapping[str, Any]) -> str:
    """One pydantic error as words (without the input value)."""
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return msg[:1].lower() + msg[1:]


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
