"""Feature cache: sharded safetensors, fp16 features, ragged token sets; checksummed, locked, resumable
(DESIGN section 5).

Layout of one cache entry (one split extracted by one backbone with one set of options)::

    <root>/<split>-<keyhash>/
        manifest.json              key, field specs, committed shards (+ byte size and SHA-256 of each),
                                   failed samples, complete flag, and a SHA-256 of the manifest itself
        shard-00000.safetensors    dense fields "<name>" (count, ...), ragged fields
                                   "<name>.values" (sum_n, D), "<name>.offsets" (count+1,),
                                   "<name>.positions" (sum_n,), plus "index" and "label" (count,)
        shard-00000.json           {"idents": sample identifiers (paths) of the stored samples,
                                    "stats": [size, mtime_ns] of every source file the shard covers}
        .lock                      advisory write lock (fcntl.flock) + "pid host time" of its holder

* The **key** is ``(backbone id, weights hash, transform, dataset fingerprint, options)``; its hash
  names the directory, so a cache built with other options is never silently reused. Format
  version 2 (checksums, file stats) is part of the key: entries of format 1 are re-extracted.
* Writes are **atomic**: a shard (and its sidecar) is written to a temp file and renamed, then the
  manifest is rewritten (temp + rename) to list it. A shard is only ever read if the manifest
  lists it, so a kill at any moment leaves a consistent cache; extraction resumes after the last
  committed shard and a finished entry is never recomputed. A shard is committed every
  ``commit_rows`` samples (256), every ``commit_seconds`` (30 s) or every ``shard_mb`` (256 MB),
  whichever comes first, so a kill loses at most that much work.
* **Integrity**: opening an entry checks the manifest's own checksum (an edited ``count`` is
  caught), that every listed shard exists with its recorded byte size, and each shard's header
  when it is mapped; :meth:`CacheReader.verify` (``full=True``) also re-hashes the shards.
  A damaged or missing shard raises :class:`CacheError` naming the file before its data is used.
* **Locking**: one writer per entry (:class:`EntryLock`); a second one waits (or fails after
  ``lock_timeout``) and never deletes files the first one wrote.
* Readers **memory-map** shards (the safetensors header is parsed here and the data region mapped
  with ``numpy.memmap``) and can stream them shard by shard.
"""

from __future__ import annotations

from tagood.errors import CacheError
import errno
import hashlib
import json
import logging
import os
import re
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from safetensors.numpy import save as _st_save

from tagood.core.featureset import FeatureSet, from_cache
from tagood.runtime.fileio import atomic_write_bytes, atomic_write_json
from tagood.core.types import TokenSet

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
LOCK_FILE = ".lock"
#: default commit policy of :class:`CacheWriter`: a shard every this many samples / seconds (or ``shard_mb``)
COMMIT_ROWS = 256
COMMIT_SECONDS = 30.0

#: Fields stored as fp16 by default (large); everything else keeps float32 / its integer type.
FP16_FIELDS = frozenset({"tokens", "features", "tag_attention", "patch_embeds"})

_ST_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}




def cache_key(
    backbone_id: str, weights_hash: str, transform_id: str, dataset_fingerprint: str, options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The key that identifies one cache entry (DESIGN section 5)."""
    return {
        "format": FORMAT_VERSION,
        "backbone": backbone_id,
        "weights": weights_hash,
        "transform": transform_id,
        "dataset": dataset_fingerprint,
        "options": dict(sorted((options or {}).items())),
    }


def key_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def entry_dir(root: str | Path, split: str, key: Mapping[str, Any]) -> Path:
    """Directory of the cache entry for ``split`` under ``key``."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", split).strip("_") or "split"
    return Path(root) / f"{safe}-{key_hash(key)}"


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def file_stat(ident: str) -> list[int] | None:
    """``[size, mtime_ns]`` of the file ``ident`` names (symlinks followed), ``None`` when it is not a file
    (an in-memory sample such as ``fashion-mnist:12``, or a file that is gone)."""
    try:
        st = os.stat(ident)
    except (OSError, ValueError):
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def _atomic_save_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> tuple[int, str]:
    """Write ``tensors`` to ``path`` atomically; returns (bytes, SHA-256) of the file written."""
    data = _st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    atomic_write_bytes(path, data)
    return len(data), hashlib.sha256(data).hexdigest()


def _atomic_write_json_hashed(path: Path, obj: Any) -> str:
    return hashlib.sha256(atomic_write_json(path, obj, indent=None)).hexdigest()


def _canonical_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


_HELD: set[str] = set()  # entry directories this process holds the write lock of


def _lock_disabled() -> bool:
    return os.environ.get("TAGOOD_CACHE_LOCK", "").lower() in ("0", "off", "no", "false")


class EntryLock:
    """Advisory write lock of one cache entry: ``fcntl.flock`` on ``<entry>/.lock``.

    One writer (extraction, repair, ``tagood cache rm``) per entry at a time, across processes; on
    Linux NFS (v4, or v3 with lockd) ``flock`` is mapped to POSIX byte-range locks and so also works
    across machines. File systems that do not support locks (some FUSE mounts, SMB mounts without
    lock support, Lustre without ``-o flock``) raise ``ENOLCK`` / ``EOPNOTSUPP``: that is a
    :class:`CacheError` telling the user to set ``TAGOOD_CACHE_LOCK=off`` (and then to run one writer
    per entry at a time). ``timeout``: ``None`` waits for the other writer, ``0`` fails at once,
    ``t`` fails after ``t`` seconds; the error names the holder (pid and host).
    """

    def __init__(self, directory: str | Path, timeout: float | None = None) -> None:
        self.dir = Path(directory)
        self.timeout = timeout
        self._fd: int | None = None
        self._key = os.path.realpath(self.dir)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """Who holds (or last held) the lock, as written in the lock file."""
        try:
            return (self.dir / LOCK_FILE).read_text(errors="replace").strip()[:200] or "another process"
        except OSError:
            return "another process"

    def acquire(self) -> "EntryLock":
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
        try:
            fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CacheError(f"cannot create the lock file of cache entry {self.dir}: {e.strerror}; "
                             "use a writable cache directory (--cache or TAGOOD_CACHE)") from e
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
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.discard(self._key)
        if fd >= 0:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> "EntryLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:  # a writer dropped without finish()/close() (e.g. after an exception)
        try:
            self.release()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def mmap_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file as a read-only numpy array (no copy)."""
    path = Path(path)
    fix = "run `tagood cache verify --repair` or delete the cache entry and re-extract"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise CacheError(f"{path} is truncated or damaged (header length {n} > file size {size}); {fix}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise CacheError(f"cannot read safetensors header of {path}: {e}; {fix}") from e
    header.pop("__metadata__", None)
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            start, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(x) for x in info["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise CacheError(f"{path}: damaged header entry for tensor {name!r} ({e!r}); {fix}") from e
        if base + end > size:
            raise CacheError(f"{path} is truncated (tensor {name}); {fix}")
        if not 0 <= start <= end or end - start != int(np.prod(shape)) * dtype.itemsize or min(shape, default=1) < 0:
            raise CacheError(f"{path}: damaged header (tensor {name} offsets do not match its shape); {fix}")
        count = int(np.prod(shape)) if shape else 1
        if count == 0:
            out[name] = np.zeros(shape, dtype=dtype)
        else:
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=shape)
    return out


@dataclass
class ShardInfo:
    file: str
    start: int  # first source index covered by this shard
    stop: int  # one past the last source index covered
    count: int  # samples stored (covered minus failed)
    bytes: int = 0  # size of the safetensors file
    sha256: str = ""  # of the safetensors file
    sidecar_sha256: str = ""  # of the sidecar JSON (idents + file stats)

    @property
    def sidecar(self) -> str:
        return self.file[: -len(".safetensors")] + ".json" if self.file.endswith(".safetensors") else self.file + ".json"


@dataclass
class Manifest:
    key: dict[str, Any]
    split: str
    n_source: int
    shards: list[ShardInfo] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    #: first source index covered: 0 for an entry; a rank's part of a torchrun extraction
    #: (:mod:`tagood.extract`) covers ``[start, n_source)`` only
    start: int = 0

    @property
    def next_index(self) -> int:
        return self.shards[-1].stop if self.shards else self.start

    @property
    def n_samples(self) -> int:
        return sum(s.count for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        d = {
            "version": FORMAT_VERSION,
            "key": self.key,
            "split": self.split,
            "n_source": self.n_source,
            "shards": [dict(s.__dict__) for s in self.shards],
            "failed": self.failed,
            "fields": self.fields,
            "complete": self.complete,
            "meta": self.meta,
        }
        if self.start:  # only parts have it: an entry's manifest is the same as before parts existed
            d["start"] = self.start
        d["checksum"] = _canonical_hash(d)
        return d

    def check(self, where: Path) -> None:
        """Structural checks: contiguous shards, counts that agree with the failures, a complete entry covers all."""
        fix = f"run `tagood cache verify --repair` or delete {where.parent} and re-extract"
        pos = self.start
        failed_at = sorted(int(f["index"]) for f in self.failed)
        for s in self.shards:
            if s.start != pos or s.stop < s.start or s.stop > self.n_source:
                raise CacheError(f"corrupt cache manifest {where}: shard {s.file} covers [{s.start}, {s.stop}) "
                                 f"after sample {pos}; {fix}")
            n_failed = int(np.searchsorted(failed_at, s.stop) - np.searchsorted(failed_at, s.start))
            if s.count != s.stop - s.start - n_failed or not re.fullmatch(r"shard-[0-9A-Za-z-]+\.safetensors", s.file):
                raise CacheError(f"corrupt cache manifest {where}: shard {s.file} lists {s.count} samples, its range "
                                 f"[{s.start}, {s.stop}) minus {n_failed} failed gives {s.stop - s.start - n_failed}; {fix}")
            pos = s.stop
        if self.complete and pos != self.n_source:
            raise CacheError(f"corrupt cache manifest {where}: marked complete at sample {pos} of {self.n_source}; {fix}")

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        """Read and check a manifest: its own SHA-256 (any edit is caught), its format and its structure."""
        fix = f"run `tagood cache verify --repair` or delete {path.parent} and re-extract"
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            version = d.get("version", 1)
            if version != FORMAT_VERSION:
                raise CacheError(f"cache manifest {path} has format {version}, this tagood reads format {FORMAT_VERSION}; "
                                 f"delete {path.parent} (`tagood cache rm`) and re-extract")
            if d.get("checksum") != _canonical_hash({k: v for k, v in d.items() if k != "checksum"}):
                raise CacheError(f"cache manifest {path} was modified or damaged (its checksum does not match); {fix}")
            m = cls(
                key=d["key"],
                split=d["split"],
                n_source=int(d["n_source"]),
                shards=[ShardInfo(**sh) for sh in d["shards"]],
                failed=list(d.get("failed", [])),
                fields=dict(d.get("fields", {})),
                complete=bool(d.get("complete", False)),
                meta=dict(d.get("meta", {})),
                start=int(d.get("start", 0)),
            )
        except CacheError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            detail = e.strerror if isinstance(e, OSError) else type(e).__name__
            raise CacheError(f"corrupt cache manifest {path} ({detail}); {fix}") from e
        m.check(path)
        return m


def _rows(arr: Any, sl: slice) -> Any:
    """Rows ``sl`` of a dense array, a TokenSet, or a list of per-sample (tokens, positions) pairs."""
    if isinstance(arr, TokenSet):
        return arr.select(np.arange(len(arr))[sl])
    return arr[sl]


def _to_storage(name: str, rows: Any) -> Any:
    """Dense rows -> ndarray in storage dtype; ragged rows -> (values, lengths, positions)."""
    fp = np.float16 if name in FP16_FIELDS else np.float32
    if isinstance(rows, TokenSet):
        v = np.asarray(rows.values)
        return (v.astype(fp) if v.dtype.kind == "f" else v, rows.lengths.astype(np.int64), np.asarray(rows.positions, np.int64))
    if isinstance(rows, list):
        vals = [np.asarray(t) for t, _ in rows]
        v = np.concatenate(vals) if vals else np.zeros((0, 0))
        return (v.astype(fp) if v.dtype.kind == "f" else v, np.array([len(t) for t in vals], np.int64),
                np.concatenate([np.asarray(p, np.int64) for _, p in rows]) if rows else np.zeros(0, np.int64))
    a = np.asarray(rows)
    return a.astype(fp) if a.dtype.kind == "f" else a


def _nbytes(v: Any) -> int:
    return sum(x.nbytes for x in v) if isinstance(v, tuple) else int(v.nbytes)


class CacheWriter:
    """Append samples to a cache entry, committing a shard every ``commit_rows`` samples, every
    ``commit_seconds`` or every ``shard_mb`` MB, whichever comes first (``shard_size``: exactly that
    many samples per shard instead).

    Use :meth:`open` to create or resume an entry; it takes the entry's write lock
    (:class:`EntryLock`), released by :meth:`finish` or :meth:`close`. ``add`` takes a batch:
    ``indices`` (source indices, increasing), ``labels``, ``idents``, and ``arrays`` = {field: array};
    a field whose value is a list of per-sample ``(tokens (n_i,D), positions (n_i,))`` pairs or a
    :class:`TokenSet` is stored ragged. ``skip`` records a sample that failed to decode. ``stats``
    (``[size, mtime_ns]`` per sample, taken before decoding) are stored for the freshness check;
    without them the writer stats the files itself.
    """

    def __init__(self, directory: Path, manifest: Manifest, shard_size: int | None, shard_mb: float,
                 commit_rows: int | None = COMMIT_ROWS, commit_seconds: float | None = COMMIT_SECONDS) -> None:
        self.dir = directory
        self.manifest = manifest
        self.shard_size = shard_size
        self.shard_mb = shard_mb
        self.commit_rows = commit_rows
        self.commit_seconds = commit_seconds
        self._buf: list[dict[str, Any]] = []  # blocks of rows, already in storage dtype
        self._buf_failed: list[dict[str, Any]] = []
        self._stats: dict[int, list[int] | None] = {}
        self._buffered = 0
        self._row_nbytes: int | None = None
        self._covered_to = manifest.next_index
        self._t_shard = time.monotonic()
        self._rewrite: int | None = None
        self._lock: EntryLock | None = None
        self.written: set[str] = set()  # shard files this writer committed (known good)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        root: str | Path,
        split: str,
        key: dict[str, Any],
        n_source: int,
        shard_size: int | None = None,
        shard_mb: float = 256.0,
        meta: Mapping[str, Any] | None = None,
        commit_rows: int | None = COMMIT_ROWS,
        commit_seconds: float | None = COMMIT_SECONDS,
        lock: EntryLock | None = None,
        lock_timeout: float | None = None,
        start: int = 0,
    ) -> "CacheWriter":
        """Create or resume the entry of ``(split, key)``. Takes the entry's write lock unless ``lock``
        (already held by the caller) is given; a second writer waits for it (``lock_timeout``).
        ``start`` > 0: the entry covers source samples ``[start, n_source)`` only (a rank's part)."""
        if shard_size is not None and shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        d = entry_dir(root, split, key)
        d.mkdir(parents=True, exist_ok=True)
        mpath = d / MANIFEST
        norm_key = json.loads(json.dumps(key, default=str))

        def load_checked() -> Manifest | None:
            if not mpath.exists():
                return None
            m = Manifest.load(mpath)
            if m.key != norm_key:
                raise CacheError(f"cache entry {d} was built with another key; delete it and re-extract")
            if m.n_source != n_source or m.start != start:
                raise CacheError(f"cache entry {d} covers source samples [{m.start}, {m.n_source}), not [{start}, {n_source})")
            return m

        load_checked()  # clear errors before waiting for a lock
        own = lock is None
        lk = lock if lock is not None else EntryLock(d, lock_timeout).acquire()
        try:
            # under the lock: whatever temp files / unlisted shards lie here, their writer is gone
            for tmp in d.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            m = load_checked()
            if m is not None:
                listed = {s.file for s in m.shards} | {s.sidecar for s in m.shards}
                for stale in list(d.glob("shard-*.safetensors")) + list(d.glob("shard-*.json")):
                    if stale.name not in listed:  # written but never committed
                        stale.unlink(missing_ok=True)
            else:
                m = Manifest(key=norm_key, split=split, n_source=n_source, meta=dict(meta or {}), start=start)
                atomic_write_json(mpath, m.to_json())
        except BaseException:
            if own:
                lk.release()
            raise
        w = cls(d, m, shard_size, shard_mb, commit_rows, commit_seconds)
        w._lock = lk if own else None
        return w

    def close(self) -> None:
        """Release the write lock without committing the buffered rows (they are lost, the entry stays consistent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def next_index(self) -> int:
        """First source index not yet covered by a committed shard."""
        return self.manifest.next_index

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    # -- writing ----------------------------------------------------------------------------
    def add(self, indices: np.ndarray, labels: np.ndarray, idents: list[str], arrays: Mapping[str, Any],
            stats: Sequence[list[int] | None] | None = None) -> None:
        """Append a batch (source indices increasing); fields are converted to their storage dtype once per batch."""
        indices = np.asarray(indices, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        n, start = len(indices), 0
        for j, i in enumerate(indices.tolist()):
            self._stats[i] = list(stats[j]) if stats is not None and stats[j] is not None else (
                None if stats is not None else file_stat(idents[j]))
        while start < n:
            take = min(self._room(arrays, n), n - start)
            sl = slice(start, start + take)
            block: dict[str, Any] = {"index": indices[sl], "label": labels[sl], "ident": list(idents[sl])}
            for name, arr in arrays.items():
                block[name] = _to_storage(name, _rows(arr, sl))
            self._buf.append(block)
            self._buffered += take
            self._covered_to = int(indices[start + take - 1]) + 1
            start += take
            if self._shard_full():
                self._commit()

    def skip(self, index: int, ident: str, reason: str, stat: list[int] | None | bool = True) -> None:
        """Record a sample that could not be decoded; it is reported, never stored."""
        self._buf_failed.append({"index": int(index), "ident": ident, "reason": reason})
        self._stats[int(index)] = file_stat(ident) if stat is True else (stat or None)
        self._covered_to = int(index) + 1

    def _room(self, arrays: Mapping[str, Any], n: int) -> int:
        """Rows that still fit in the current shard."""
        if self._rewrite is not None:
            return n
        if self.shard_size is not None:
            return max(1, self.shard_size - self._buffered)
        if self._row_nbytes is None:
            probe = {k: _to_storage(k, _rows(v, slice(0, 1))) for k, v in arrays.items()}
            self._row_nbytes = max(1, sum(_nbytes(v) for v in probe.values()))
        room = int(self.shard_mb * 2**20 // self._row_nbytes) - self._buffered
        if self.commit_rows is not None:
            room = min(room, self.commit_rows - self._buffered)
        return max(1, room)

    def _shard_full(self) -> bool:
        if self._buffered == 0 or self._rewrite is not None:
            return False
        if self.shard_size is not None:
            return self._buffered >= self.shard_size
        if self.commit_rows is not None and self._buffered >= self.commit_rows:
            return True
        if self.commit_seconds is not None and time.monotonic() - self._t_shard >= self.commit_seconds:
            return True
        return self._buffered * (self._row_nbytes or 1) >= self.shard_mb * 2**20

    def begin_rewrite(self, i: int) -> tuple[int, int]:
        """Start re-writing shard ``i`` (damaged, or its files changed): returns the source range
        ``(start, stop)`` to add again; :meth:`end_rewrite` swaps the new shard in atomically."""
        if self._buf or self._buf_failed:
            raise CacheError("begin_rewrite with uncommitted rows")
        self._rewrite = i
        info = self.manifest.shards[i]
        self._covered_to = info.start
        return info.start, info.stop

    def end_rewrite(self) -> None:
        i = self._rewrite
        assert i is not None
        info = self.manifest.shards[i]
        if self._covered_to != info.stop:
            raise CacheError(f"{self.dir}: re-extraction of {info.file} covered up to {self._covered_to}, not {info.stop}")
        self._commit()
        self._rewrite = None
        self._covered_to = self.manifest.next_index

    def _commit(self) -> None:
        if not self._buf and not self._buf_failed and self._rewrite is None:
            return
        blocks = self._buf
        slot = self._rewrite if self._rewrite is not None else len(self.manifest.shards)
        name = f"shard-{slot:05d}.safetensors" if self._rewrite is None else f"shard-{slot:05d}-{uuid.uuid4().hex[:8]}.safetensors"
        tensors: dict[str, np.ndarray] = {
            "index": np.concatenate([b["index"] for b in blocks]) if blocks else np.zeros(0, np.int64),
            "label": np.concatenate([b["label"] for b in blocks]) if blocks else np.zeros(0, np.int64),
        }
        idents = [x for b in blocks for x in b["ident"]]
        specs = self.manifest.fields
        for f in (k for k in (blocks[0] if blocks else {}) if k not in ("index", "label", "ident")):
            parts = [b[f] for b in blocks]
            if isinstance(parts[0], tuple):  # ragged: (values, lengths, positions)
                vals = np.concatenate([p[0] for p in parts])
                lens = np.concatenate([p[1] for p in parts])
                offsets = np.zeros(len(lens) + 1, dtype=np.int64)
                np.cumsum(lens, out=offsets[1:])
                tensors[f"{f}.values"] = vals
                tensors[f"{f}.offsets"] = offsets
                tensors[f"{f}.positions"] = np.concatenate([p[2] for p in parts])
                specs.setdefault(f, {"kind": "ragged", "dtype": vals.dtype.name, "dim": int(vals.shape[1]) if vals.ndim == 2 else 0})
            else:
                arr = np.concatenate(parts)
                tensors[f] = arr
                specs.setdefault(f, {"kind": "dense", "dtype": arr.dtype.name, "shape": list(arr.shape[1:])})
        if not blocks:  # a shard holding only failures still needs the field arrays (empty)
            for f, spec in specs.items():
                if spec["kind"] == "ragged":
                    tensors[f"{f}.values"] = np.zeros((0, spec["dim"]), dtype=spec["dtype"])
                    tensors[f"{f}.offsets"] = np.zeros(1, np.int64)
                    tensors[f"{f}.positions"] = np.zeros(0, np.int64)
                else:
                    tensors[f] = np.zeros((0, *spec["shape"]), dtype=spec["dtype"])
        if self._rewrite is not None:
            old = self.manifest.shards[slot]
            start, stop = old.start, old.stop
        else:
            old, start, stop = None, self.manifest.next_index, self._covered_to
        nbytes, digest = _atomic_save_safetensors(self.dir / name, tensors)
        info = ShardInfo(file=name, start=start, stop=stop, count=len(idents), bytes=nbytes, sha256=digest)
        info.sidecar_sha256 = _atomic_write_json_hashed(
            self.dir / info.sidecar, {"idents": idents, "stats": [self._stats.get(i) for i in range(start, stop)]})
        if old is None:
            self.manifest.shards.append(info)
            self.manifest.failed.extend(self._buf_failed)
        else:
            self.manifest.shards[slot] = info
            kept = [f for f in self.manifest.failed if not start <= int(f["index"]) < stop]
            self.manifest.failed = sorted(kept + self._buf_failed, key=lambda f: int(f["index"]))
        atomic_write_json(self.dir / MANIFEST, self.manifest.to_json())
        self.written.add(name)
        if old is not None and old.file != name:  # the manifest no longer lists it; we hold the lock
            (self.dir / old.file).unlink(missing_ok=True)
            (self.dir / old.sidecar).unlink(missing_ok=True)
            self.written.discard(old.file)
        self._buf, self._buf_failed, self._buffered = [], [], 0
        self._stats = {k: v for k, v in self._stats.items() if k >= stop}
        self._t_shard = time.monotonic()

    def commit(self) -> None:
        """Commit the buffered rows as a shard now."""
        self._commit()

    def finish(self, meta: Mapping[str, Any] | None = None) -> "CacheReader":
        """Commit the last shard, mark the entry complete, release the lock and return a reader."""
        self._commit()
        if self.manifest.next_index != self.manifest.n_source:
            raise CacheError(
                f"{self.dir}: finished at source index {self.manifest.next_index} of {self.manifest.n_source}"
            )
        self.manifest.complete = True
        self.manifest.meta.update(meta or {})
        atomic_write_json(self.dir / MANIFEST, self.manifest.to_json())
        self.close()
        return CacheReader(self.dir, verified=self.written)


@dataclass
class Problem:
    """One defect found by :meth:`CacheReader.verify`: the shard (index into the manifest, ``None`` for the
    manifest itself), the file and what is wrong."""

    shard: int | None
    file: str
    message: str


class CacheReader:
    """Read a cache entry: memory-mapped shards, streamed or concatenated.

    Opening checks the manifest (checksum, structure) and that every listed shard and sidecar exists
    with its recorded size; a shard's header is checked against the manifest when it is mapped, and,
    with ``verify_on_read`` (default), its SHA-256 the first time this reader maps it. Any defect is
    a :class:`CacheError` naming the file, raised before the shard's data is used."""

    def __init__(self, directory: str | Path, verified: Iterable[str] = (), verify_on_read: bool = True,
                 check_files: bool = True) -> None:
        self.dir = Path(directory)
        mpath = self.dir / MANIFEST
        if not mpath.exists():
            raise CacheError(f"no cache manifest in {self.dir}; run `tagood extract` first")
        self.manifest = Manifest.load(mpath)
        self._shards: dict[str, dict[str, np.ndarray]] = {}
        self._verified: set[str] = set(verified)
        self.verify_on_read = verify_on_read
        if check_files:
            problems = self.verify(full=False)
            if problems:
                raise CacheError(_problems_message(self.dir, problems))

    def _fix(self) -> str:
        return f"run `tagood cache verify --repair {self.dir}` (or re-run the extraction, which repairs it)"

    def _check_header(self, i: int, raw: Mapping[str, np.ndarray]) -> None:
        info = self.manifest.shards[i]
        path = self.dir / info.file
        n = info.count
        bad: list[str] = []
        for k in ("index", "label"):
            if k not in raw or raw[k].shape != (n,):
                bad.append(f"'{k}' has shape {raw[k].shape if k in raw else None}, the manifest says ({n},)")
        for f, spec in self.fields.items():
            if spec["kind"] == "ragged":
                v, o, p = raw.get(f"{f}.values"), raw.get(f"{f}.offsets"), raw.get(f"{f}.positions")
                if v is None or o is None or p is None or o.shape != (n + 1,) or p.shape[0] != v.shape[0] or (
                        n and (int(o[0]) != 0 or int(o[-1]) != v.shape[0])):
                    bad.append(f"ragged field '{f}' is inconsistent")
            elif f in raw and (raw[f].shape[:1] != (n,) or list(raw[f].shape[1:]) != list(spec["shape"])):
                bad.append(f"'{f}' has shape {raw[f].shape}, expected ({n}, {', '.join(map(str, spec['shape']))})")
        if bad:
            raise CacheError(f"cache shard {path} does not match the manifest ({'; '.join(bad)}); {self._fix()}")

    def verify(self, full: bool = True, shards: Iterable[int] | None = None) -> list[Problem]:
        """Check the listed shards: present, of the recorded size, header consistent with the manifest
        and, with ``full``, the SHA-256 of every shard file and sidecar. Returns the problems found
        (empty = sound); shards that pass a full check are not re-hashed by this reader."""
        out: list[Problem] = []
        for i in (range(len(self.manifest.shards)) if shards is None else shards):
            info = self.manifest.shards[i]
            path, side = self.dir / info.file, self.dir / info.sidecar
            try:
                size = path.stat().st_size
            except OSError:
                out.append(Problem(i, info.file, "missing"))
                continue
            if not side.is_file():
                out.append(Problem(i, info.sidecar, "missing"))
                continue
            if size != info.bytes:
                out.append(Problem(i, info.file, f"size {size} bytes, the manifest says {info.bytes} (truncated or replaced)"))
                continue
            try:
                self._check_header(i, mmap_safetensors(path))
            except CacheError as e:
                out.append(Problem(i, info.file, str(e).split(";")[0]))
                continue
            if not full:
                continue
            if sha256_file(path) != info.sha256:
                out.append(Problem(i, info.file, "checksum mismatch (the bytes changed since it was written)"))
            elif sha256_file(side) != info.sidecar_sha256:
                out.append(Problem(i, info.sidecar, "checksum mismatch (the sample list changed since it was written)"))
            else:
                self._verified.add(info.file)
        return out

    def file_stats(self, i: int) -> list[list[int] | None]:
        """``[size, mtime_ns]`` (or ``None``) recorded at extraction for every source index shard ``i`` covers."""
        info = self.manifest.shards[i]
        side = json.loads((self.dir / info.sidecar).read_text())
        return list(side.get("stats", [])) if isinstance(side, dict) else [None] * (info.stop - info.start)

    def changed_shards(self, current: Sequence[list[int] | None]) -> dict[int, int]:
        """Shards whose source files changed since extraction: ``{shard: number of changed files}``.

        ``current[i]`` is the ``[size, mtime_ns]`` of source sample ``i`` now (:func:`file_stat`); a
        sample whose stat was not recorded (an in-memory sample) is never counted as changed."""
        out: dict[int, int] = {}
        for i, info in enumerate(self.manifest.shards):
            then = self.file_stats(i)
            n = sum(1 for j, old in enumerate(then) if old is not None and list(old) != (current[info.start + j] or None))
            if n:
                out[i] = n
        return out

    def __len__(self) -> int:
        return self.manifest.n_samples

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        return self.manifest.fields

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Samples that could not be decoded: ``{"index", "ident", "reason"}``."""
        return self.manifest.failed

    def shard(self, i: int, keep: bool = True) -> dict[str, np.ndarray]:
        """Shard ``i`` memory-mapped; ``keep=False`` does not keep the mapping open in this reader."""
        info = self.manifest.shards[i]
        if info.file in self._shards:
            return self._shards[info.file]
        path = self.dir / info.file
        if not path.exists():
            raise CacheError(f"cache shard {path} is missing; {self._fix()}")
        if path.stat().st_size != info.bytes:
            raise CacheError(f"cache shard {path} has {path.stat().st_size} bytes, the manifest says {info.bytes}; {self._fix()}")
        if self.verify_on_read and info.file not in self._verified:
            if sha256_file(path) != info.sha256:
                raise CacheError(f"cache shard {path} is damaged (checksum mismatch); {self._fix()}")
            self._verified.add(info.file)
        arrays = mmap_safetensors(path)
        self._check_header(i, arrays)
        if keep:
            self._shards[info.file] = arrays
        return arrays

    def _nonempty(self) -> list[int]:
        return [i for i, s in enumerate(self.manifest.shards) if s.count > 0]

    def iter_shards(self) -> Iterator[dict[str, Any]]:
        """Stream shards: each yields ``{"index", "label", dense fields..., ragged fields as TokenSet}``."""
        for i in self._nonempty():
            yield self._decode(self.shard(i))

    def _decode(self, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {"index": raw["index"], "label": raw["label"]}
        for f, spec in self.fields.items():
            if spec["kind"] == "ragged":
                out[f] = TokenSet(raw[f"{f}.values"], raw[f"{f}.offsets"], raw[f"{f}.positions"])
            elif f in raw:
                out[f] = raw[f]
        return out

    def array(self, name: str, dtype: Any = np.float32) -> np.ndarray:
        """A dense field (or ``index``/``label``) concatenated over all shards (loaded into RAM)."""
        if name not in ("index", "label") and (name not in self.fields or self.fields[name]["kind"] != "dense"):
            raise KeyError(f"cache {self.dir} has no dense field '{name}' (has {sorted(self.fields)})")
        parts = [self.shard(i)[name] for i in self._nonempty()]
        if name in ("index", "label"):
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)
        arr = np.concatenate(parts) if parts else np.zeros((0, *self.fields[name]["shape"]))
        return arr.astype(dtype) if dtype is not None and arr.dtype.kind == "f" else np.asarray(arr)

    def tokens(self, name: str = "tokens", dtype: Any = np.float32) -> TokenSet:
        """A ragged field concatenated over all shards as one TokenSet (loaded into RAM)."""
        if name not in self.fields:
            raise KeyError(f"cache {self.dir} has no field '{name}'")
        if self.fields[name]["kind"] == "dense":
            return TokenSet.from_dense(self.array(name, dtype))
        parts = [self._decode(self.shard(i))[name] for i in self._nonempty()]
        if not parts:
            return TokenSet(np.zeros((0, self.fields[name].get("dim", 0)), dtype), np.zeros(1, np.int64), np.zeros(0, np.int64))
        ts = TokenSet.concat(parts)
        return TokenSet(ts.values.astype(dtype), ts.offsets, ts.positions)

    @property
    def labels(self) -> np.ndarray:
        return self.array("label")

    @property
    def indices(self) -> np.ndarray:
        """Source index of each stored sample (failed samples are absent)."""
        return self.array("index")

    @property
    def idents(self) -> list[str]:
        out: list[str] = []
        for s in self.manifest.shards:
            raw = (self.dir / s.sidecar).read_bytes()
            if self.verify_on_read and hashlib.sha256(raw).hexdigest() != s.sidecar_sha256:
                raise CacheError(f"cache sidecar {self.dir / s.sidecar} is damaged (checksum mismatch); {self._fix()}")
            side = json.loads(raw)
            ids = side["idents"] if isinstance(side, dict) else side
            if len(ids) != s.count:
                raise CacheError(f"cache sidecar {self.dir / s.sidecar} lists {len(ids)} samples, the manifest says "
                                 f"{s.count}; {self._fix()}")
            out.extend(ids)
        return out

    def nbytes(self) -> int:
        """Bytes of the stored shards (fp16 on disk: loading a field as float32 takes about twice this)."""
        return sum((self.dir / s.file).stat().st_size for s in self.manifest.shards if (self.dir / s.file).exists())

    def _check_fields(self, fields: list[str]) -> None:
        for f in fields:
            if f not in self.fields:
                raise KeyError(f"cache {self.dir} has no field '{f}' (has {sorted(self.fields)})")

    @property
    def split(self) -> str:
        """The split name this entry was extracted for."""
        return self.manifest.split

    def _with_ids(self, names: Sequence[str]) -> list[str]:
        """``names`` checked, plus ``tag_ids`` when ``tag_attention`` is asked for (the maps' tag ids)."""
        names = list(names)
        if "tag_attention" in names and "tag_ids" not in names and "tag_ids" in self.fields:
            names.append("tag_ids")
        self._check_fields(names)
        return names

    def arrays(self, names: Sequence[str], dtype: Any = np.float32) -> dict[str, Any]:
        """The fields ``names`` of every shard concatenated (loaded into RAM): ``label``, dense fields
        (floats as ``dtype``), ragged ones as one TokenSet (values as ``dtype``), and ``tag_ids`` with
        ``tag_attention``. :func:`tagood.core.featureset.from_arrays` makes them a FeatureSet."""
        out: dict[str, Any] = {"label": self.labels}
        for f in self._with_ids(names):
            out[f] = self.tokens(f, dtype) if self.fields[f]["kind"] == "ragged" else self.array(f, dtype)
        return out

    def iter_arrays(self, names: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Stream the fields ``names`` shard by shard: ``(first sample, arrays of that shard)`` with
        ``label``, memory-mapped arrays in their stored dtype (fp16), ragged fields as TokenSets and
        ``tag_ids`` with ``tag_attention``. Only one shard is mapped at a time."""
        names = self._with_ids(names)
        start = 0
        for i in self._nonempty():
            dec = self._decode(self.shard(i, keep=False))
            yield start, {"label": dec["label"], **{f: dec[f] for f in names}}
            start += len(dec["label"])

    def to_featureset(self, fields: list[str] | None = None, name: str = "", stream: Iterable[str] = ()) -> FeatureSet:
        """A FeatureSet of the requested fields (default: all), ``stream``-ed ones shard by shard: the
        same as :func:`tagood.core.featureset.from_cache` (where the mapping of stored fields lives)."""
        return from_cache(self, fields, name=name, stream=stream)


#: Fields that grow with tokens or tag vocabulary per image: the ones worth streaming.
HEAVY_FIELDS: frozenset[str] = frozenset({"tokens", "patch_embeds", "tag_probs", "tag_attention"})

#: Default limit of :func:`heavy_fields` (the ``stream_above_gb`` option of benchmarks and of
#: ``tagood fit`` / ``score``): a split whose heavy fields would take more than this many GiB as
#: float32 is streamed shard by shard from the cache (``None``: never stream, ``0``: always).
STREAM_ABOVE_GB: float = 8.0


def heavy_fields(reader: CacheReader, fields: list[str], max_gb: float | None = STREAM_ABOVE_GB) -> list[str]:
    """The fields of ``fields`` to stream: the heavy ones (:data:`HEAVY_FIELDS`) when loading the split
    as float32 would take more than ``max_gb`` GiB (about twice its fp16 size on disk; default
    :data:`STREAM_ABOVE_GB`); ``None`` never streams, ``0`` always does."""
    if max_gb is None:
        return []
    if 2 * reader.nbytes() <= max_gb * 2**30 and max_gb > 0:
        return []
    return [f for f in fields if f in HEAVY_FIELDS]


def _problems_message(d: Path, problems: Sequence[Problem]) -> str:
    head = "; ".join(f"{d / p.file}: {p.message}" for p in problems[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return (f"cache entry {d} is damaged: {head}{more}; run `tagood cache verify --repair {d}` "
            "(or re-run the extraction, which re-extracts the damaged shards)")


@dataclass
class EntryInfo:
    """One entry of a cache root as listed by :func:`list_entries`."""

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
    """Every cache entry (a directory holding ``manifest.json``) directly under ``root``; an entry whose
    manifest cannot be read is listed with its ``error``."""
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
    """Delete a cache entry, holding its write lock (fails with a clear message while a writer holds it)."""
    import shutil

    d = Path(directory)
    if not (d / MANIFEST).exists() and not list(d.glob("shard-*.safetensors")):
        raise CacheError(f"{d} is not a tagood cache entry (no manifest.json); nothing removed")
    with EntryLock(d, lock_timeout):
        for f in d.iterdir():
            if f.name != LOCK_FILE:
                shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink(missing_ok=True)
    shutil.rmtree(d, ignore_errors=True)


def set_aside_manifest(directory: Path) -> Path:
    """Rename a damaged manifest to ``manifest.json.damaged-<time>`` (under the lock) so the entry re-extracts."""
    dst = directory / f"{MANIFEST}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(directory / MANIFEST, dst)
    return dst
