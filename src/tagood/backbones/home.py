"""Where tagood keeps what it derives on disk: ``$TAGOOD_HOME`` (ONNX exports, fitted bridges, text
embeddings) and the feature cache root below it (``$TAGOOD_CACHE`` overrides it).

Nothing is downloaded into these folders unless the user asks; they hold only artefacts tagood computes
from weights already on the machine, so deleting them costs recomputation, never data.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_root", "tagood_home"]


def tagood_home() -> Path:
    """``$TAGOOD_HOME`` or ``~/.cache/tagood``: where derived artefacts (ONNX exports, fitted maps) live."""
    return Path(os.environ.get("TAGOOD_HOME") or Path.home() / ".cache" / "tagood")


def default_cache_root() -> Path:
    """``$TAGOOD_CACHE`` or ``$TAGOOD_HOME/features`` or ``~/.cache/tagood/features``: the feature cache root."""
    if os.environ.get("TAGOOD_CACHE"):
        return Path(os.environ["TAGOOD_CACHE"])
    return tagood_home() / "features"
