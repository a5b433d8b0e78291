"""Reuse of a complete cache entry that holds more fields than asked for (:func:`superset_entry`).

An entry's key names the fields it stores, so a run that needs fewer fields than an earlier run of the same split
(MSP needs ``features``; TagScore stored ``features``, ``tokens``, ``tag_probs``, ...) would otherwise extract an entry
of its own: at ImageNet-1K scale another tens of GB on disk and another pass over the images. A complete entry whose
key equals the wanted one in everything but its fields, and whose fields include every wanted one, holds exactly the
arrays that extraction would store (the same backbone, weights, transform, source fingerprint and options; each
field is computed from the image alone), so it is read instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tagood.cache.keys import entry_dir, key_hash
from tagood.cache.manifest import MANIFEST, Manifest
from tagood.errors import CacheError

log = logging.getLogger(__name__)

__all__ = ["superset_entry"]


def _without_fields(key: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``key`` less its ``options.fields``, and those fields (empty when the key names none)."""
    options = dict(key.get("options") or {})
    fields = options.pop("fields", None)
    return {**key, "options": options}, [str(f) for f in fields] if isinstance(fields, (list, tuple)) else []


def superset_entry(root: str | Path, split: str, key: Mapping[str, Any]) -> tuple[Path, dict[str, Any], list[str]] | None:
    """A complete entry of ``split`` under ``root`` that holds every field of ``key`` and equals it otherwise.

    Args:
        root: the cache root.
        split: the split's name (as :func:`tagood.cache.keys.entry_dir` takes it).
        key: the wanted key (:func:`tagood.cache.keys.cache_key` with ``options["fields"]``).

    Returns:
        ``(directory, its key, its fields)`` of the entry with the fewest fields among those that qualify (ties:
        the first directory name), or ``None``: no such entry, the wanted entry itself exists (it is resumed or
        read, never replaced), or the key names no fields. Entries whose manifest cannot be read, that are not
        complete or whose directory is not named after their key are skipped.
    """
    want_rest, want = _without_fields(key)
    if not want:
        return None
    mine = entry_dir(root, split, key)
    if (mine / MANIFEST).exists():
        return None
    prefix = mine.name[: -len(key_hash(key))]  # "<safe split>-"
    pattern = re.compile(re.escape(prefix) + "[0-9a-f]{16}")
    best: tuple[int, str, Path, dict[str, Any], list[str]] | None = None
    root = Path(root)
    if not root.is_dir():
        return None
    for d in root.iterdir():
        if not pattern.fullmatch(d.name):
            continue
        try:
            if not (d / MANIFEST).is_file():
                continue
            m = Manifest.load(d / MANIFEST)
        except (CacheError, OSError, ValueError) as e:  # unreadable or damaged: not read, left for `tagood cache`
            log.debug("cache: %s not considered for reuse (%s)", d, e)
            continue
        rest, have = _without_fields(m.key)
        if not m.complete or rest != want_rest or not set(want) <= set(have) or d.name != f"{prefix}{key_hash(m.key)}":
            continue
        cand = (len(have), d.name, d, dict(m.key), have)
        if best is None or cand[:2] < best[:2]:
            best = cand
    if best is None:
        return None
    log.info("cache: %s reuses %s, which holds %s (a superset of %s)", split, best[2], sorted(best[4]), sorted(want))
    return best[2], best[3], best[4]

