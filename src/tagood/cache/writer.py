"""The cache writer (:class:`CacheWriter`): buffers samples, commits shards atomically, resumes, rewrites."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tagood.cache.keys import entry_dir, file_stat
from tagood.cache.lock import EntryLock
from tagood.cache.manifest import MANIFEST, MANIFEST_LOG, Manifest, ShardInfo, append_log, log_line
from tagood.cache.reader import CacheReader
from tagood.cache.shards import write_json_hashed, write_safetensors
from tagood.core.types import TokenSet
from tagood.errors import CacheError
from tagood.runtime.fileio import atomic_write_json

#: default commit policy of :class:`CacheWriter`: a shard every this many samples / seconds (or ``shard_mb``), so a
#: kill loses at most about ``COMMIT_SECONDS`` of work (plus the batch in flight) at any size
COMMIT_ROWS = 256
COMMIT_SECONDS = 10.0
#: the first shard of a writer is committed after at most this many seconds (a run killed early keeps its work too)
FIRST_COMMIT_SECONDS = 3.0

#: Fields stored as fp16 by default (large); everything else keeps float32 / its integer type.
FP16_FIELDS = frozenset({"tokens", "features", "tag_attention", "patch_embeds"})


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
    """Bytes of a stored field's rows (the three arrays of a ragged one)."""
    return sum(x.nbytes for x in v) if isinstance(v, tuple) else int(v.nbytes)


class CacheWriter:
    """Append samples to a cache entry, committing a shard every ``commit_rows`` samples, every
    ``commit_seconds`` or every ``shard_mb`` MB, whichever comes first (``shard_size``: exactly that
    many samples per shard instead). The first shard a writer commits comes after at most
    :data:`FIRST_COMMIT_SECONDS` (or ``commit_seconds`` when smaller).

    Use :meth:`open` to create or resume an entry; it takes the entry's write lock
    (:class:`EntryLock`), released by :meth:`finish` or :meth:`close`. ``add`` takes a batch:
    ``indices`` (source indices, increasing), ``labels``, ``idents``, and ``arrays`` = {field: array};
    a field whose value is a list of per-sample ``(tokens (n_i,D), positions (n_i,))`` pairs or a
    :class:`TokenSet` is stored ragged. ``skip`` records a sample that failed to decode. ``stats``
    (``[size, mtime_ns]`` per sample, taken before decoding) are stored for the freshness check;
    without them the writer stats the files itself.

    Args:
        directory: the entry's directory.
        manifest: its manifest as loaded or created by :meth:`open`.
        shard_size: exactly this many samples per shard, or ``None`` for the commit policy below.
        shard_mb: commit when the buffered rows reach this many MB.
        commit_rows: commit every this many samples (``None``: no limit).
        commit_seconds: commit when this many seconds passed since the last commit (``None``: no limit).
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
        self._committed = False  # a shard was committed by this writer (the first one comes sooner)
        self._rewrite: int | None = None
        self._lock: EntryLock | None = None
        self.written: set[str] = set()  # shard files this writer committed (known good)
        # what manifest.json (+ the log) on disk holds: its checksum, the log's lines, and how many shards and
        # failed samples it lists (a commit logs the ones after these)
        self._base = ""
        self._log_seq = 0
        self._saved_shards = len(manifest.shards)
        self._saved_failed = len(manifest.failed)
        #: bytes written to manifest.json and manifest.log by this writer (a commit's own cost, tested)
        self.manifest_bytes = 0

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
    ) -> CacheWriter:
        """Create or resume the entry of ``(split, key)``.

        Under the lock, temp files and shards the manifest does not list (written by a writer that was
        killed before committing them) are removed.

        Args:
            root: the cache root.
            split: the split's name.
            key: the entry's key (:func:`tagood.cache.keys.cache_key`).
            n_source: number of samples in the source.
            shard_size: exactly this many samples per shard (``None``: the commit policy).
            shard_mb: commit when the buffered rows reach this many MB.
            meta: stored in a new manifest's ``meta``.
            commit_rows: commit every this many samples.
            commit_seconds: commit this many seconds after the last commit.
            lock: the entry's lock, already held by the caller; ``None`` takes it here (released by
                :meth:`finish` or :meth:`close`).
            lock_timeout: how long to wait for another writer (``None``: as long as it takes).
            start: > 0: the entry covers source samples ``[start, n_source)`` only (a rank's part).

        Returns:
            The writer, positioned after the last committed shard.

        Raises:
            CacheError: the entry exists with another key or range, its manifest is damaged, or
                another writer holds it past ``lock_timeout``.
        """
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
            w = cls(d, m, shard_size, shard_mb, commit_rows, commit_seconds)
            # a new entry, or a resumed one whose log is folded in (a torn last line then never precedes a new one)
            if not mpath.exists() or (d / MANIFEST_LOG).exists():
                w._compact()
            else:
                w._base = str(m.to_json()["checksum"])
        except BaseException:
            if own:
                lk.release()
            raise
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
    def covered_to(self) -> int:
        """One past the last source index added or skipped (committed or still buffered)."""
        return self._covered_to

    @property
    def complete(self) -> bool:
        """Whether the entry is marked complete."""
        return self.manifest.complete

    # -- writing ----------------------------------------------------------------------------
    def add(self, indices: np.ndarray, labels: np.ndarray, idents: list[str], arrays: Mapping[str, Any],
            stats: Sequence[list[int] | None] | None = None) -> None:
        """Append a batch; fields are converted to their storage dtype once per batch.

        Args:
            indices: source indices, increasing (and after every index added before).
            labels: a label per sample.
            idents: an identifier (path) per sample.
            arrays: field -> rows: dense arrays, TokenSets, or lists of ``(tokens (n_i,D), positions (n_i,))``
                pairs (stored ragged).
            stats: ``[size, mtime_ns]`` (or ``None``) per sample, taken before decoding; ``None``: stat
                the files now.
        """
        indices = np.asarray(indices, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        n, start = len(indices), 0
        for j, i in enumerate(indices.tolist()):
            if stats is None:
                self._stats[i] = file_stat(idents[j])
            else:
                st = stats[j]
                self._stats[i] = list(st) if st is not None else None
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
        """Record a sample that could not be decoded; it is reported, never stored.

        Args:
            index: its source index.
            ident: its identifier (path).
            reason: why it failed.
            stat: its ``[size, mtime_ns]`` (or ``None``); ``True``: stat the file now.
        """
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
        if self.commit_seconds is not None:
            limit = self.commit_seconds if self._committed else min(self.commit_seconds, FIRST_COMMIT_SECONDS)
            if time.monotonic() - self._t_shard >= limit:
                return True
        return self._buffered * (self._row_nbytes or 1) >= self.shard_mb * 2**20

    def begin_rewrite(self, i: int) -> tuple[int, int]:
        """Start re-writing shard ``i`` (damaged, or its files changed); :meth:`end_rewrite` swaps the new
        shard in atomically.

        Args:
            i: the shard's index in the manifest.

        Returns:
            The source range ``(start, stop)`` to add again.
        """
        if self._buf or self._buf_failed:
            raise CacheError("begin_rewrite with uncommitted rows")
        self._rewrite = i
        info = self.manifest.shards[i]
        self._covered_to = info.start
        return info.start, info.stop

    def end_rewrite(self) -> None:
        """Commit the re-written shard in place of the old one (whose files are then removed)."""
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
        name = (f"shard-{slot:05d}.safetensors" if self._rewrite is None
                else f"shard-{slot:05d}-{uuid.uuid4().hex[:8]}.safetensors")
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
                specs.setdefault(f, {"kind": "ragged", "dtype": vals.dtype.name,
                                     "dim": int(vals.shape[1]) if vals.ndim == 2 else 0})
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
        nbytes, digest = write_safetensors(self.dir / name, tensors)
        info = ShardInfo(file=name, start=start, stop=stop, count=len(idents), bytes=nbytes, sha256=digest)
        info.sidecar_sha256 = write_json_hashed(
            self.dir / info.sidecar, {"idents": idents, "stats": [self._stats.get(i) for i in range(start, stop)]})
        if old is None:
            self.manifest.shards.append(info)
            self.manifest.failed.extend(self._buf_failed)
        else:
            self.manifest.shards[slot] = info
            kept = [f for f in self.manifest.failed if not start <= int(f["index"]) < stop]
            self.manifest.failed = sorted(kept + self._buf_failed, key=lambda f: int(f["index"]))
        if old is None:
            self._log_commit()
        else:  # a shard replaced in the middle: the whole manifest is written
            self._compact()
        self.written.add(name)
        if old is not None and old.file != name:  # the manifest no longer lists it; we hold the lock
            (self.dir / old.file).unlink(missing_ok=True)
            (self.dir / old.sidecar).unlink(missing_ok=True)
            self.written.discard(old.file)
        self._buf, self._buf_failed, self._buffered = [], [], 0
        self._stats = {k: v for k, v in self._stats.items() if k >= stop}
        self._t_shard = time.monotonic()
        self._committed = True

    def commit(self) -> None:
        """Commit the buffered rows as a shard now."""
        self._commit()

    def append_shards(self, shards: Sequence[ShardInfo], failed: Sequence[dict[str, Any]],
                      fields: Mapping[str, dict[str, Any]]) -> None:
        """List shards already written into this entry's directory (another writer's, linked here) after
        the committed ones; the manifest is written by the next commit or :meth:`finish`.

        Args:
            shards: the shards, contiguous from :attr:`next_index`, in source order.
            failed: their failed samples.
            fields: their field specs (a field already listed keeps its spec).
        """
        m = self.manifest
        m.shards.extend(shards)
        m.failed.extend(failed)
        for f, spec in fields.items():
            m.fields.setdefault(f, spec)
        self._covered_to = m.next_index

    def finish(self, meta: Mapping[str, Any] | None = None) -> CacheReader:
        """Commit the last shard, mark the entry complete and release the lock.

        Args:
            meta: added to the manifest's ``meta``.

        Returns:
            A reader of the entry (the shards this writer committed are not hashed again).

        Raises:
            CacheError: the committed shards do not cover the whole source.
        """
        self._commit()
        if self.manifest.next_index != self.manifest.n_source:
            raise CacheError(
                f"{self.dir}: finished at source index {self.manifest.next_index} of {self.manifest.n_source}"
            )
        self.manifest.complete = True
        self.manifest.meta.update(meta or {})
        self._compact()
        self.close()
        return CacheReader(self.dir, verified=self.written)

    def _log_commit(self) -> None:
        """Record the shards and failures added since the manifest was last saved: one line appended to the
        manifest's log, whatever the number of shards listed before (:func:`tagood.cache.manifest.append_log`)."""
        m = self.manifest
        line = log_line(self._base, self._log_seq, m.shards[self._saved_shards:], m.failed[self._saved_failed:], m.fields)
        self.manifest_bytes += append_log(self.dir / MANIFEST_LOG, line)
        self._log_seq += 1
        self._saved_shards, self._saved_failed = len(m.shards), len(m.failed)

    def _compact(self) -> None:
        """Write the whole manifest to ``manifest.json`` (atomically), then remove the log it now contains. A kill
        between the two leaves a log whose ``base`` is the old manifest's checksum: readers ignore it."""
        d = self.manifest.to_json()
        self.manifest_bytes += len(atomic_write_json(self.dir / MANIFEST, d))
        (self.dir / MANIFEST_LOG).unlink(missing_ok=True)
        self._base, self._log_seq = str(d["checksum"]), 0
        self._saved_shards, self._saved_failed = len(self.manifest.shards), len(self.manifest.failed)

