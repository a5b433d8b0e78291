"""Atomic file writes: the project's one "temp file in the same folder + rename".

Every writer here writes to a temporary name next to the destination, flushes it to disk and then
renames it into place with :func:`os.replace`, so a reader (or a crash, or a concurrent writer)
never sees a half-written file at the destination: it sees the old file or the complete new one.
On any error the temporary file is removed and the destination is left as it was.

Temporary names are hidden and end in ``.tmp`` (``.<name>.<random>.tmp``) unless a caller asks for
another suffix, so a folder can be swept of leftovers with ``glob(".*.tmp")``.

This module is a base layer: it imports nothing from ``tagood``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_directory", "atomic_open", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
    "atomic_write_with", "atomic_copy",
]


def _umask() -> int:
    """This process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    m = os.umask(0o022)  # elsewhere: set and restore
    os.umask(m)
    return m


def _usual_mode(target: int | str | Path, directory: bool = False) -> None:
    """Give a temp file (an open fd or a path) or temp folder the permissions a plain ``open()`` / ``mkdir()`` would
    have: ``mkstemp`` / ``mkdtemp`` create them owner-only (0600 / 0700), which would make results and a shared
    feature cache unreadable to the rest of a group."""
    mode = (0o777 if directory else 0o666) & ~_umask()
    if isinstance(target, int):
        os.fchmod(target, mode)
    else:
        os.chmod(target, mode)


def _fsync_path(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """Open a binary temp file beside ``path``; on a clean exit it is flushed, synced and renamed to ``path``.

    >>> with atomic_open(p) as f:          # doctest: +SKIP
    ...     np.savez(f, a=a)

    The parent folder must exist. If the block raises, the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        _usual_mode(fd)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + rename)."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same folder + rename)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1) -> bytes:
    """Write ``obj`` as JSON to ``path`` atomically; values JSON cannot hold are written as ``str(value)``.

    Returns the bytes written (so a caller can hash exactly what is on disk).
    """
    data = json.dumps(obj, indent=indent, default=str).encode()
    atomic_write_bytes(path, data)
    return data


def atomic_write_with(path: str | Path, write: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """``write(tmp)`` creates a file at the temp path ``tmp`` (beside ``path``); it is then synced and renamed to ``path``.

    For writers that only take a file name (``torch.onnx.export``, ``safetensors.save_file``,
    ``shutil.copyfile``); what ``write`` returns is ignored. ``suffix`` ends the temp name, for writers that look at
    the extension.
    If ``write`` raises, or leaves no file behind, the temp file is removed and ``path`` is untouched.
    Returns ``path``.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer for {path} left no file at its temp path {tmp}")
        _usual_mode(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src``'s bytes to ``dst`` atomically (copy to a temp file beside ``dst``, then rename)."""
    return atomic_write_with(dst, lambda tmp: shutil.copyfile(src, tmp))


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on a clean exit it is renamed to ``path``.

    ``path`` must not exist or be an empty folder (an empty one is replaced). If the block raises,
    the temp folder and everything in it are removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        _usual_mode(tmp, directory=True)
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_path(f)
        if path.exists():
            path.rmdir()  # only an empty folder; a non-empty one raises OSError and nothing is lost
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
