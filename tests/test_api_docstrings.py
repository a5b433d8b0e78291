"""The public API's docstrings: every name of ``tagood.__all__`` and every public method and property of the classes
among them has a Google-style docstring -- ``Args:`` when it takes parameters, ``Returns:`` (or ``Yields:``) when it
returns something, ``Raises:`` naming each tagood error its body raises, ``Attributes:`` naming each field of a
dataclass -- the main entry points carry a ``>>>`` example, and the examples of the API modules run.
"""

from __future__ import annotations

import dataclasses
import doctest
import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

import tagood
from tagood.errors import TagoodError

#: the entry points whose docstrings must show a runnable example
EXAMPLES = ("create", "Detector.fit", "Detector.score", "extract_features", "ood_metrics", "compare")

_SECTION = re.compile(r"^\s*(?P<name>[A-Z][A-Za-z ]*):\s*$", re.M)
_RAISE = re.compile(r"^\s*raise\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*\(", re.M)


def _sections(doc: str) -> dict[str, str]:
    """The Google-style sections of ``doc``: ``{"Args": text, "Returns": text, ...}``."""
    marks = list(_SECTION.finditer(doc))
    return {m["name"]: doc[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(doc)]
            for i, m in enumerate(marks)}


def _own_doc(obj: Any) -> str:
    """The docstring written for ``obj`` itself (not inherited, not the one ``@dataclass`` makes up)."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not doc:
        return ""
    if isinstance(obj, type) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""
    return inspect.cleandoc(doc)


def _tagood_errors_raised(func: Callable[..., Any]) -> list[str]:
    """The tagood error classes that ``func``'s own body raises by name (not those of the functions it calls)."""
    try:
        src = inspect.getsource(func)
    except (OSError, TypeError):
        return []
    names = dict.fromkeys(m["name"] for m in _RAISE.finditer(src))
    glb = getattr(func, "__globals__", {})
    return [n for n in names if isinstance(glb.get(n), type) and issubclass(glb[n], TagoodError)]


def callable_problems(qualname: str, func: Callable[..., Any]) -> list[str]:
    """What the docstring of function or method ``func`` lacks (``[]`` when nothing)."""
    doc = _own_doc(func)
    if not doc:
        return [f"{qualname}: no docstring"]
    sections = _sections(doc)
    out = []
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    if params:
        if "Args" not in sections:
            out.append(f"{qualname}: no Args section")
        else:
            out += [f"{qualname}: Args does not name '{p.name}'" for p in params
                    if not re.search(rf"^\s*\**{re.escape(p.name)}\b.*:", sections["Args"], re.M)]
    if sig.return_annotation not in (None, "None") and not {"Returns", "Yields"} & set(sections):
        out.append(f"{qualname}: no Returns section")
    for err in _tagood_errors_raised(func):
        if err not in sections.get("Raises", ""):
            out.append(f"{qualname}: raises {err}, not named in a Raises section")
    return out


def class_problems(name: str, cls: type) -> list[str]:
    """What the docstrings of class ``cls`` and of its own public methods and properties lack."""
    doc = _own_doc(cls)
    if not doc:
        return [f"{name}: no docstring"]
    out = []
    if dataclasses.is_dataclass(cls):
        attrs = _sections(doc).get("Attributes")
        if attrs is None:
            out.append(f"{name}: a dataclass without an Attributes section")
        else:
            out += [f"{name}: Attributes does not name '{f.name}'" for f in dataclasses.fields(cls)
                    if not re.search(rf"^\s*{re.escape(f.name)}\b.*:", attrs, re.M)]
    init = cls.__dict__.get("__init__")  # a dataclass's is generated from the fields its Attributes name
    takes = inspect.isfunction(init) and [p for p in inspect.signature(init).parameters if p != "self"]
    if takes and not dataclasses.is_dataclass(cls) and "Args" not in _sections(_own_doc(init) + "\n" + doc):
        out.append(f"{name}.__init__: no Args section (in the class or __init__ docstring)")
    for attr, member in public_members(cls):
        qual = f"{name}.{attr}"
        if isinstance(member, property):
            out += [] if _own_doc(member) else [f"{qual}: no docstring"]
        else:
            out += callable_problems(qual, member)
    return out


def public_members(cls: type) -> Iterator[tuple[str, Any]]:
    """``(name, function or property)`` of the public methods and properties ``cls`` defines or inherits from a class
    of its own package (what pydantic, dataclasses, ``Exception`` or ``ABC`` give is not tagood's to document)."""
    seen: set[str] = set()
    package = cls.__module__.split(".")[0]
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] != package:
            continue
        for attr, value in vars(klass).items():
            if attr.startswith("_") or attr in seen:
                continue
            seen.add(attr)
            if isinstance(value, (classmethod, staticmethod)):
                yield attr, value.__func__
            elif isinstance(value, property) or inspect.isfunction(value):
                yield attr, value


def api_objects() -> list[tuple[str, Any]]:
    """``(name, object)`` of every public name of ``tagood`` but ``__version__``."""
    return [(n, getattr(tagood, n)) for n in tagood.__all__ if n != "__version__"]


def api_problems() -> list[str]:
    out: list[str] = []
    for name, obj in api_objects():
        out += class_problems(name, obj) if isinstance(obj, type) else callable_problems(name, obj)
    return out


def api_modules() -> list[ModuleType]:
    """The modules that define the public names, and ``tagood`` itself."""
    names = {"tagood"} | {obj.__module__ for _, obj in api_objects()}
    return [importlib.import_module(n) for n in sorted(names)]


# -- the tests ---------------------------------------------------------------------------------------------------------
def test_public_api_docstrings_are_complete() -> None:
    problems = api_problems()
    assert not problems, f"{len(problems)} docstring problems in the public API:\n" + "\n".join(problems)


def test_the_checker_walks_methods_and_properties() -> None:
    """The walk reaches the methods of the API classes (not pydantic's, dataclasses' or Exception's)."""
    members = {f"{n}.{a}" for n, obj in api_objects() if isinstance(obj, type) for a, _ in public_members(obj)}
    assert {"Detector.fit", "Detector.score", "Detector.save", "FeatureSet.from_chunks", "FeatureSet.has",
            "FeatureSet.subset", "ComparisonResult.to_dict"} <= members
    assert not {m for m in members if m.split(".")[1] in ("model_dump", "with_traceback", "add_note", "register")}


@pytest.mark.parametrize("entry", EXAMPLES)
def test_entry_points_have_an_example(entry: str) -> None:
    obj: Any = tagood
    for part in entry.split("."):
        obj = getattr(obj, part)
    assert ">>>" in _own_doc(obj), f"{entry} has no '>>>' example in its docstring"


def test_api_modules_have_examples() -> None:
    """The example-bearing API modules are found and their examples collected; tests/test_docs_blocks.py::test_doctests
    runs them (with every other module of src/tagood that has examples)."""
    with_examples = {m.__name__ for m in api_modules()
                     if any(t.examples for t in doctest.DocTestFinder().find(m))}
    assert {"tagood", "tagood.detectors.base", "tagood.extract.features", "tagood.metrics",
            "tagood.bench.compare"} <= with_examples, with_examples


# -- the checker flags what it should --------------------------------------------------------------------------------
def _no_doc(x: int) -> int:
    return x


def _no_args(x: int) -> int:
    """Twice ``x``.

    Returns:
        ``2 * x``.
    """
    return 2 * x


def _no_returns(x: int) -> int:
    """Twice ``x``.

    Args:
        x: a number.
    """
    return 2 * x


def _wrong_arg(x: int, y: int) -> None:
    """Nothing.

    Args:
        x: a number.
    """


def _raises(x: int) -> None:
    """Refuse ``x``.

    Args:
        x: a number.
    """
    raise TagoodError(f"no {x}")


def _good(x: int, *rest: int, **opts: Any) -> int:
    """Twice ``x``.

    Args:
        x: a number.
        *rest: more numbers.
        **opts: options.

    Returns:
        ``2 * x``.

    Raises:
        TagoodError: never, in fact.
    """
    return 2 * x


@dataclasses.dataclass
class _NoAttributes:
    """A dataclass without an Attributes section."""

    a: int = 0


class _Undocumented:
    pass


class _UndocumentedMethod:
    """A class whose method has no docstring."""

    def twice(self, x: int) -> int:
        return 2 * x


@pytest.mark.parametrize(("func", "problem"), [
    (_no_doc, "no docstring"), (_no_args, "no Args section"), (_no_returns, "no Returns section"),
    (_wrong_arg, "Args does not name 'y'"), (_raises, "raises TagoodError"),
])
def test_checker_flags_a_bad_function(func: Callable[..., Any], problem: str) -> None:
    assert any(problem in p for p in callable_problems(func.__name__, func)), callable_problems(func.__name__, func)


def test_checker_accepts_a_good_function_and_flags_bad_classes() -> None:
    assert callable_problems("_good", _good) == []
    assert class_problems("_NoAttributes", _NoAttributes) == ["_NoAttributes: a dataclass without an Attributes section"]
    assert class_problems("_Undocumented", _Undocumented) == ["_Undocumented: no docstring"]
    assert class_problems("_UndocumentedMethod", _UndocumentedMethod) == ["_UndocumentedMethod.twice: no docstring"]
