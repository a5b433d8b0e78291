"""The write lock of one cache entry (:class:`EntryLock`): ``fcntl.flock`` on ``<entry>/.lock``."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any

from tagood.errors import CacheError

log = logging.getLogger(__name__)

#: Name of the lock file inside an entry; it holds "pid <pid> on <host> since <time>" of its holder.
LOCK_FILE = ".lock"

_HELD: set[str] = set()  # entry directories this process holds the write lock of


def _lock_disabled() -> bool:
    """``TAGOOD_CACHE_LOCK=off`` (or 0 / no / false): write without a lock (file systems without locks)."""
    return os.environ.get("TAGOOD_CACHE_LOCK", "").lower() in ("0", "off", "no", "false")


class EntryLock:
    """Advisory write lock of one cache entry: ``fcntl.flock`` on ``<entry>/.lock``.

    One writer (extraction, repair, ``tagood cache rm``) per entry at a time, across processes; on
    Linux NFS (v4, or v3 with lockd) ``flock`` is mapped to POSIX byte-range locks and so also works
    across machines. File systems that do not support locks (some FUSE mounts, SMB mounts without
    lock support, Lustre without ``-o flock``) raise ``ENOLCK`` / ``EOPNOTSUPP``: that is a
    :class:`CacheError` telling the user to set ``TAGOOD_CACHE_LOCK=off`` (and then to run one writer
    per entry at a time). A process that already holds an entry's lock cannot take it again.

    Args:
        directory: the cache entry's directory (created when missing).
        timeout: ``None`` waits for the other writer, ``0`` fails at once, ``t`` fails after ``t``
            seconds; the error names the holder (pid and host).
    """

    def __init__(self, directory: str | Path, timeout: float | None = None) -> None:
        self.dir = Path(directory)
        self.timeout = timeout
        self._fd: int | None = None
        self._key = os.path.realpath(self.dir)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def holder(self) -> str:
        """Who holds (or last held) the lock.

        Returns:
            The lock file's text (``pid <pid> on <host> since <time>``), or ``"another process"``.
        """
        try:
            return (self.dir / LOCK_FILE).read_text(errors="replace").strip()[:200] or "another process"
        except OSError:
            return "another process"

    def acquire(self) -> EntryLock:
        """Take the lock, waiting for another writer as ``timeout`` allows.

        Returns:
            This lock, held.

        Raises:
            CacheError: another writer holds it past ``timeout``, this process already holds it, or
                the file system does not support locks.
        """
        import fcntl

        if self._fd is not None:
            return self
        if _lock_disabled():
            log.debug("cache locking disabled (TAGOOD_CACHE_LOCK=off): %s", self.dir)
            self._fd = -1
            return self
        if self._key in _HELD:
            raise CacheError(f"this process already writes the cache entry {self.dir} (an unfinished CacheWriter); "
                             "finish() or close() it first")
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / LOCK_FILE
        try:  # never through a symbolic link: the lock file is truncated and written
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as e:
            if e.errno in (errno.EISDIR, errno.ELOOP, errno.ENXIO):
                raise CacheError(f"{path} is {'a directory' if e.errno == errno.EISDIR else 'not a regular file'}, not the "
                                 "entry's lock file, so the entry cannot be locked; remove it (`tagood cache verify "
                                 f"--repair {self.dir}` does)") from e
            raise CacheError(f"cannot create the lock file of cache entry {self.dir}: {e.strerror}; "
                             "use a writable cache directory (--cache or TAGOOD_CACHE)") from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CacheError(f"{path} is not a regular file, not the entry's lock file, so the entry cannot be locked; "
                             f"remove it (`tagood cache verify --repair {self.dir}` does)")
        t0, warned = time.monotonic(), False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = time.monotonic() - t0
                    if self.timeout is not None and waited >= self.timeout:
                        raise CacheError(f"cache entry {self.dir} is being written by {self.holder()}; wait for it to "
                                         "finish (it is never modified by two writers at once)") from None
                    if not warned:
                        log.warning("cache entry %s is being written by %s; waiting for it", self.dir, self.holder())
                        warned = True
                    time.sleep(0.2)
                except OSError as e:
                    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise CacheError(f"the file system of {self.dir} does not support file locks ({e.strerror}); "
                                         "set TAGOOD_CACHE_LOCK=off to write without a lock, and then run only one "
                                         "extraction per cache entry at a time") from e
                    raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _HELD.add(self._key)
        return self

    def release(self) -> None:
        """Release the lock (nothing when it is not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.discard(self._key)
        if fd >= 0:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> EntryLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # a writer dropped without finish()/close() (e.g. after an exception)
        try:
            self.release()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
