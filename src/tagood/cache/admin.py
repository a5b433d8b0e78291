"""Administration of a cache root: list its entries, remove one (under its lock), set a damaged manifest aside."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tagood.cache.lock import LOCK_FILE, EntryLock
from tagood.cache.manifest import MANIFEST, Manifest
from tagood.errors import CacheError


@dataclass
class EntryInfo:
    """One entry of a cache root as listed by :func:`list_entries`.

    Args:
        dir: the entry's directory.
        split: its split's name.
        n_samples: samples stored.
        n_source: samples in its source.
        n_failed: samples that could not be decoded.
        complete: whether it covers its whole source.
        nbytes: bytes of its shard files.
        backbone: the backbone id of its key (``"?"`` when the manifest cannot be read).
        error: why its manifest cannot be read, or ``None``.
    """

    dir: Path
    split: str
    n_samples: int
    n_source: int
    n_failed: int
    complete: bool
    nbytes: int
    backbone: str
    error: str | None = None


def list_entries(root: str | Path) -> list[EntryInfo]:
    """Every cache entry (a directory holding ``manifest.json``) directly under ``root``.

    Args:
        root: the cache root (a missing one has no entries).

    Returns:
        The entries sorted by directory name; one whose manifest cannot be read is listed with its ``error``.
    """
    out: list[EntryInfo] = []
    root = Path(root)
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and (p / MANIFEST).exists()):
        nbytes = sum(f.stat().st_size for f in d.glob("shard-*") if f.is_file())
        try:
            m = Manifest.load(d / MANIFEST)
            out.append(EntryInfo(d, m.split, m.n_samples, m.n_source, len(m.failed), m.complete, nbytes,
                                 str(m.key.get("backbone", "?"))))
        except CacheError as e:
            out.append(EntryInfo(d, d.name.rsplit("-", 1)[0], 0, 0, 0, False, nbytes, "?", str(e)))
    return out


def remove_entry(directory: str | Path, lock_timeout: float | None = 0) -> None:
    """Delete a cache entry, holding its write lock.

    Args:
        directory: the entry's directory.
        lock_timeout: how long to wait for a writer that holds it (``0``: fail at once).

    Raises:
        CacheError: ``directory`` is not a cache entry, or a writer holds it past ``lock_timeout``.
    """
    d = Path(directory)
    if not (d / MANIFEST).exists() and not list(d.glob("shard-*.safetensors")):
        raise CacheError(f"{d} is not a tagood cache entry (no manifest.json); nothing removed")
    with EntryLock(d, lock_timeout):
        for f in d.iterdir():
            if f.name != LOCK_FILE:
                shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink(missing_ok=True)
    shutil.rmtree(d, ignore_errors=True)


def set_aside_manifest(directory: Path) -> Path:
    """Rename a damaged manifest to ``manifest.json.damaged-<time>`` so the entry is extracted again.

    The caller holds the entry's lock.

    Args:
        directory: the entry's directory.

    Returns:
        The renamed manifest's path.
    """
    dst = directory / f"{MANIFEST}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(directory / MANIFEST, dst)
    return dst
