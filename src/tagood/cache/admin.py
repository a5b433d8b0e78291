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
    for d in entry_dirs(root):
        nbytes = 0
        try:
            nbytes = sum(f.stat().st_size for f in d.glob("shard-*") if f.is_file())
            m = Manifest.load(d / MANIFEST)
            problem = lock_problem(d)
            out.append(EntryInfo(d, m.split, m.n_samples, m.n_source, len(m.failed), m.complete, nbytes,
                                 str(m.key.get("backbone", "?")), problem))
        except (CacheError, OSError) as e:  # an unreadable entry is listed with its error; the others still are
            msg = str(e) if isinstance(e, CacheError) else f"cannot read {e.filename or d} ({e.strerror})"
            out.append(EntryInfo(d, d.name.rsplit("-", 1)[0], 0, 0, 0, False, nbytes, "?", msg))
    return out


def _is_entry(p: Path) -> bool:
    """A cache entry: a directory holding ``manifest.json`` (or one that cannot be looked into: it is reported)."""
    try:
        return p.is_dir() and (p / MANIFEST).exists()
    except OSError:  # permission denied on the directory itself
        return True


def entry_dirs(root: str | Path) -> list[Path]:
    """The entry directories directly under a cache root, sorted; an entry that cannot be read is included (its
    reader reports it) instead of stopping the listing.

    Args:
        root: the cache root (a missing one has no entries).

    Returns:
        The entry directories.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _is_entry(p))


def lock_problem(directory: Path) -> str | None:
    """What is wrong with the entry's lock file (``.lock`` a directory, a FIFO, ...), or ``None`` when it is a regular
    file or absent: a lock that is no file makes every run on the entry fail.

    Args:
        directory: the entry's directory.

    Returns:
        The problem, naming the path and the fix, or ``None``.
    """
    import stat as _stat

    p = directory / LOCK_FILE
    try:
        st = p.lstat()
    except OSError:  # absent, or the entry cannot be looked into (its reader reports that)
        return None
    if _stat.S_ISREG(st.st_mode):
        return None
    kind = ("a directory" if _stat.S_ISDIR(st.st_mode) else "a symbolic link" if _stat.S_ISLNK(st.st_mode)
            else "not a regular file")
    return (f"{p} is {kind}, not the entry's lock file, so no run can lock the entry; remove it (`tagood cache verify "
            "--repair` does)")


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
