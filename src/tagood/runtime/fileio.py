"""Atomic file writes: the project's one "temp file in the same folder + rename".

Every writer here writes to a temporary name next to the destination, flushes it to disk and then
renames it into place with :func:`os.replace`, so a reader (or a crash, or a concurrent writer)
never sees a half-written file at the destination: it sees the old file or the complete new one.
On any error the temporary file is removed and the destination is left as it was.

Temporary names are hidden and end in ``.tmp`` (``.<name>.<random>.tmp``) unless a caller asks for
another suffix, so a folder can be swept of leftovers with ``glob(".*.tmp")``.

The output rule (every writer here applies it): tagood writes only regular files. A destination that is a device,
a FIFO, a socket or a folder -- or a symbolic link to one -- is refused with :class:`OutputPathError` naming it,
before anything is created (a symbolic link to a regular file is replaced like the file: writes never go through
a link).
:func:`replaced_directory` writes a whole folder (a benchmark run) into a fresh sibling and swaps it in, so the
destination holds the old folder or the complete new one, never a mix. Reading follows the same rule:
:func:`open_regular` refuses a FIFO or device without blocking on it.

This module is a base layer: it imports only :mod:`tagood.errors` from ``tagood``.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from tagood.errors import ConfigError, InputError

__all__ = [
    "NotRegularFileError", "OutputPathError", "atomic_copy", "atomic_directory", "atomic_open", "atomic_write_bytes",
    "atomic_write_files", "atomic_write_json", "atomic_write_text", "atomic_write_with", "check_output_dir",
    "check_output_file",
    "file_kind", "open_regular", "read_regular_bytes", "replaced_directory", "sha256_file",
]


class OutputPathError(ConfigError):
    """An output path names something tagood never writes over: a device, a FIFO, a socket, a folder where a file
    is meant (or a file where a folder is meant), or a symbolic link to one. The message names the path and what
    to pass instead."""


class NotRegularFileError(InputError):
    """A file to read is a FIFO, a device, a socket or a folder: it is refused before anything blocks on it."""


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words ("regular file", "FIFO (named pipe)", "character device", ...)."""
    for test, word in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return word
    return "special file"


def check_output_file(path: str | Path) -> Path:
    """Check that a write may replace or create ``path``, before anything is written.

    A regular file (or a symbolic link to one, or a dangling one) is replaced by the new file: the name is
    replaced, never the file a link points to, so a link planted in a shared folder cannot redirect a write.

    Args:
        path: the destination a user or caller named.
    Returns:
        ``path``.
    Raises:
        OutputPathError: ``path`` (or what a symbolic link there points to) exists and is not a regular file; the
            message names it and says what to pass instead.
    """
    p = Path(path)
    try:
        mode = os.stat(p).st_mode  # through a link: a link to a device is refused like the device
    except OSError:
        return p  # a new file, a dangling link, or unreadable metadata (the write itself reports it)
    if stat.S_ISREG(mode):
        return p
    via = f" (a symbolic link to {os.path.realpath(p)})" if p.is_symlink() else ""
    if stat.S_ISDIR(mode):
        raise OutputPathError(f"{p}{via} is a folder, not a file: pass the path of a file to write (a new name, or "
                              f"a regular file to replace)")
    raise OutputPathError(f"{p}{via} is a {file_kind(mode)}, not a regular file: tagood writes only regular files and "
                          f"never writes to or replaces a device, FIFO or socket; pass the path of a regular file (new or "
                          f"existing) instead")


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


def _fsync_tree(folder: Path) -> None:
    """fsync every regular file below ``folder`` (a staged folder, before it is renamed into place)."""
    for f in folder.rglob("*"):
        if f.is_file():
            _fsync_path(f)


@contextlib.contextmanager
def atomic_open(path: str | Path, suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """Open a binary temp file beside ``path``; on a clean exit it is flushed, synced and renamed to ``path``.

    >>> with atomic_open(p) as f:          # doctest: +SKIP
    ...     np.savez(f, a=a)

    The parent folder must exist. If the block raises, the temp file is removed and ``path`` is untouched.
    """
    path = check_output_file(path)
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
    path = check_output_file(path)
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
    check_output_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        _usual_mode(tmp, directory=True)
        yield tmp
        _fsync_tree(tmp)
        if path.exists():
            path.rmdir()  # only an empty folder; a non-empty one raises OSError and nothing is lost
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_dir(path: str | Path) -> None:
    """Refuse a folder destination that exists and is not a folder (a file, a device, a FIFO, a link to one).

    Raises:
        OutputPathError: naming the path and what to pass instead.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISDIR(mode):
        via = f" (a symbolic link to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise OutputPathError(f"{path}{via} is a {file_kind(mode)}, not a folder: pass the path of a folder to write (a "
                              f"new name, or a folder this command wrote before)")


def atomic_write_files(files: dict[Path, bytes]) -> list[Path]:
    """Write several files so that they change together as far as a file system allows: every file is first
    written in full to a temp file beside its destination (a full disk or any error stops here, with every
    destination untouched), and only then are they all renamed into place.

    Args:
        files: destination -> bytes.
    Returns:
        The destinations written.
    Raises:
        OutputPathError: a destination is a device, FIFO, socket or folder (before anything is written).
    """
    targets = {check_output_file(p): data for p, data in files.items()}
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in targets.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append((tmp, path))
            _usual_mode(fd)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    return list(targets)


@contextlib.contextmanager
def open_regular(path: str | Path) -> Iterator[IO[bytes]]:
    """Open ``path`` for binary reading only if it is a regular file (a symbolic link to one is fine).

    The file is opened without blocking and checked on the open descriptor, so a FIFO with no writer, a device
    or a socket in place of a file is refused at once instead of hanging the reader.

    Raises:
        NotRegularFileError: ``path`` is not a regular file (the message names it and what it is).
        OSError: it cannot be opened (missing, no permission).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{path} is a {file_kind(mode)}, not a regular file (tagood reads only regular "
                                      "files)")
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_regular_bytes(path: str | Path) -> bytes:
    """The bytes of a regular file (:func:`open_regular`: a FIFO or device is refused, never waited on)."""
    with open_regular(path) as f:
        return f.read()


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> tuple[str, int]:
    """``(sha256 hex digest, size in bytes)`` of a regular file, read in chunks (:func:`open_regular`)."""
    h = hashlib.sha256()
    n = 0
    with open_regular(path) as f:
        while block := f.read(chunk):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


#: staging folders of :func:`replaced_directory` now open in this process (a nested call writes into its parent's)
_STAGES: set[Path] = set()
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # an old kernel or a file system without exchange: the two-rename fallback
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(new: Path, path: Path) -> None:
    """Put the folder ``new`` at ``path``; an old folder there is removed once the new one is in place."""
    if not os.path.lexists(path):
        os.rename(new, path)
    elif _exchange(new, path):
        shutil.rmtree(new, ignore_errors=True)  # ``new`` now holds the old folder
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", suffix=".tmp", dir=path.parent))
        os.rename(path, old / path.name)
        try:
            os.rename(new, path)
        except BaseException:
            os.rename(old / path.name, path)  # put the old folder back before reporting
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        _fsync_path(path.parent)


@contextlib.contextmanager
def replaced_directory(path: str | Path, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a fresh, empty folder beside ``path`` to write a whole result folder into; on a clean exit it takes
    ``path``'s place as a whole (an atomic exchange where Linux offers one), and the old folder is removed.

    If the block raises (a full disk, an error, Ctrl-C), the fresh folder is removed and ``path`` is exactly as it
    was: it never holds files of two runs. A call nested inside another for the same ``path`` -- or for the
    staging folder itself -- writes into the outer folder.

    Args:
        path: the folder to replace or create (a symbolic link to a folder: the folder it points to).
        check: called with ``path`` when it exists, before anything is written, to refuse a folder that must not
            be replaced (e.g. one holding files a run did not write); it raises to refuse.
    Yields:
        The staging folder.
    Raises:
        OutputPathError: ``path`` exists and is not a folder.
    """
    check_output_dir(path)
    path = Path(os.path.realpath(path))  # absolute, and a symbolic link's folder rather than the link
    if path in _STAGES:
        yield path
        return
    if path.parent == path:
        raise OutputPathError(f"{path} is the root folder: pass a folder of its own for the results")
    if check is not None and path.is_dir():
        check(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(os.path.realpath(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)))
    _STAGES.add(tmp)
    try:
        _usual_mode(tmp, directory=True)
        yield tmp
        _fsync_tree(tmp)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _STAGES.discard(tmp)
