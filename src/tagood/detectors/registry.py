"""The detector registry: names -> classes, and method specs ``name[key=value,...]``.

Kept apart from :mod:`tagood.detectors.base` so that :mod:`tagood.detectors.options` can look detectors up without
importing the base class module that validates options through it.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from typing import Any, TypeVar

from tagood.core.validation import suggest
from tagood.errors import ConfigError

#: name -> detector class (a subclass of :class:`tagood.detectors.base.Detector`; not imported here: base imports
#: this module)
_REGISTRY: dict[str, type] = {}
D = TypeVar("D", bound="type[Any]")


class UnknownDetectorError(ConfigError, KeyError):
    """No detector is registered under that name; the message lists the available ones (a ``KeyError`` too)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SpecError(ConfigError):
    """A method spec is not ``name`` or ``name[key=value,...]``."""


def register(name: str) -> Callable[[D], D]:
    """Class decorator: make a detector available as ``create(name)``."""

    def deco(cls: D) -> D:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"detector name '{name}' registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


_IMPORTED: list[bool] = []  # set once every detector module imported (a directory walk per create() otherwise)


def _import_all() -> None:
    if _IMPORTED:
        return
    pkg = importlib.import_module("tagood.detectors")
    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in ("base", "registry", "options", "persist") and not mod.name.startswith("_"):
            importlib.import_module(f"tagood.detectors.{mod.name}")
    # method packages that register detectors of their own
    for extra in ("tagood.detectors.tagood", "tagood.detectors.vlm"):
        try:
            importlib.import_module(extra)
        except ModuleNotFoundError as e:  # package not built yet / optional
            if e.name != extra:
                raise
    _IMPORTED.append(True)


_VARIANT = re.compile(r"^(?P<base>[^\[\]]+)(\[(?P<opts>[^\]]*)\])?$")


def parse_name(spec: str) -> tuple[str, dict[str, Any]]:
    """``'tagood[tau=0.25,score=euclid]'`` -> ``('tagood', {'tau': 0.25, 'score': 'euclid'})``."""
    m = _VARIANT.match(spec.strip())
    if not m:
        raise SpecError(f"bad detector spec '{spec}': use name or name[key=value,...]")
    opts: dict[str, Any] = {}
    if m.group("opts"):
        for part in m.group("opts").split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise SpecError(f"bad option '{part}' in '{spec}': use key=value")
            k, v = part.split("=", 1)
            if k.strip() in opts:  # the last one silently won before
                raise SpecError(f"option {k.strip()} is given twice in '{spec}'; give each option once")
            opts[k.strip()] = _parse_value(v.strip())
    return m.group("base"), opts


def split_specs(text: str) -> list[str]:
    """Split a list of method specs, ``'a,b[x=1,y=2],c'``, on the commas outside brackets (empty parts dropped)."""
    return [m.strip() for m in re.split(r",(?![^\[]*\])", text) if m.strip()]


def _parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def available() -> list[str]:
    """The names of the registered detectors, as :func:`tagood.create` takes them.

    Imports every detector module of :mod:`tagood.detectors` first, so the list is complete (plugins register
    theirs when imported).

    Returns:
        The names, sorted.

    Example:
        >>> from tagood.detectors.registry import available
        >>> {"energy", "knn", "msp", "tagood"} <= set(available())
        True
    """
    _import_all()
    return sorted(_REGISTRY)


def get_class(name: str) -> type:
    """The detector class registered as ``name``; :class:`UnknownDetectorError` (with a "did you mean") if none is."""
    _import_all()
    if name not in _REGISTRY:
        raise UnknownDetectorError(f"unknown detector '{name}'{suggest(name, _REGISTRY)}; "
                                   f"available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
