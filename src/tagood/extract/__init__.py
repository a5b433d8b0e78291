"""Extraction pipeline: image source -> backbone -> feature cache, resumable and streaming.

Decoding and preprocessing run in a thread pool (PIL and numpy release the GIL) one batch ahead
of the model forward, so the model is rarely idle. A sample that cannot be decoded is skipped,
recorded in the cache manifest (``failed``) and reported; it never aborts a run, but a source whose
every image fails, or a labelled source that loses every image of a class, is an error. An
interrupted extraction resumes after its last committed shard; a finished one does no work.

Each source file's ``[size, mtime_ns]`` is taken before it is decoded and stored with its shard. A
later call (cache hit or resume) stats the files again and re-extracts only the shards whose files
changed, and re-extracts shards that fail their checksum; a damaged manifest is set aside and the
entry extracted again. The entry's write lock (:class:`tagood.cache.EntryLock`) is held throughout.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from tagood.cache import (
    COMMIT_ROWS,
    COMMIT_SECONDS,
    MANIFEST,
    CacheError,
    CacheReader,
    CacheWriter,
    EntryLock,
    Manifest,
    cache_key,
    entry_dir,
    file_stat,
    set_aside_manifest,
)
from tagood.backbones.home import default_cache_root
from tagood.data.source import DataSourceError, ImageDecodeError, ImageSource
from tagood.runtime.distributed import World, all_gather, barrier, broadcast, init, split_range, world
from tagood.runtime.fileio import atomic_copy
from tagood.runtime.progress import progress_bar
from tagood.runtime.threads import decode_workers
from tagood.core.types import Backbone, ModelOutput

log = logging.getLogger(__name__)

T = TypeVar("T")


def _decode_one(source: ImageSource, backbone: Backbone, i: int) -> tuple[int, np.ndarray | None, str | None, list[int] | None]:
    stat = file_stat(source.samples[i].ident)  # before reading: a file changed meanwhile is re-extracted later
    try:
        return i, backbone.preprocess(source.load(i)), None, stat
    except ImageDecodeError as e:
        return i, None, e.reason, stat
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for damaged files
        return i, None, f"{type(e).__name__}: {e}", stat


def _chunks_ahead(fn: Callable[[int], T], chunks: Sequence[Sequence[int]], workers: int) -> Iterator[list[T]]:
    """``[fn(i) for i in chunk]`` for each chunk in order, computed by ``workers`` threads one chunk ahead of the
    consumer (the next chunk is submitted before the current one is handed out)."""
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ahead: list[Future] = [pool.submit(fn, int(i)) for i in chunks[0]]
        for k in range(len(chunks)):
            current = ahead
            ahead = [pool.submit(fn, int(i)) for i in chunks[k + 1]] if k + 1 < len(chunks) else []
            yield [f.result() for f in current]


def _batches(
    source: ImageSource, backbone: Backbone, start: int, batch_size: int, workers: int, stop: int | None = None
) -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]], dict[int, list[int] | None]]]:
    """Yield (indices, preprocessed batch, failures, file stats) in source order, decoding one batch ahead."""
    n = len(source) if stop is None else stop
    chunks = [list(range(a, min(a + batch_size, n))) for a in range(start, n, batch_size)]
    for results in _chunks_ahead(lambda i: _decode_one(source, backbone, i), chunks, workers):
        ok = [(i, x) for i, x, err, _ in results if x is not None]
        failed = [(i, err or "") for i, x, err, _ in results if x is None]
        batch = np.stack([x for _, x in ok]) if ok else None
        yield [i for i, _ in ok], batch, failed, {i: st for i, _, _, st in results}


def _select(out: ModelOutput, fields: Sequence[str]) -> dict[str, Any]:
    arrays: dict[str, Any] = {}
    for f in fields:
        v = getattr(out, f, None) if f in ModelOutput.__dataclass_fields__ else out.extra.get(f)
        if v is None:
            raise ValueError(f"backbone output has no field '{f}' (has {out.present() + sorted(out.extra)})")
        arrays[f] = np.asarray(v)
    return arrays


def _write_in_order(writer: CacheWriter, samples: Sequence[Any], idx: list[int], arrays: Mapping[str, np.ndarray],
                    failed: Mapping[int, str], stats: Mapping[int, list[int] | None] | None = None) -> None:
    """Write a batch's decoded rows and its failures in source order (so shards stay contiguous):
    runs of decoded rows between failures go in as one block each."""
    events = sorted([(i, j) for j, i in enumerate(idx)] + [(i, -1) for i in failed])
    run: list[tuple[int, int]] = []

    def flush() -> None:
        if run:
            rows = [j for _, j in run]
            ids = np.array([i for i, _ in run])
            sl = slice(rows[0], rows[-1] + 1)  # decoded rows of a batch are consecutive
            writer.add(ids, np.array([samples[i].label for i in ids]), [samples[i].ident for i in ids],
                       {k: v[sl] for k, v in arrays.items()},
                       stats=[stats.get(int(i)) for i in ids] if stats is not None else None)
            run.clear()

    for i, j in events:
        if j < 0:
            flush()
            log.warning("skipping %s: %s", samples[i].ident, failed[i])
            writer.skip(i, samples[i].ident, failed[i], stat=stats.get(i) if stats is not None else True)
        else:
            run.append((i, j))
    flush()


def _check_result(reader: CacheReader, source: ImageSource) -> CacheReader:
    """Every image failed, or a labelled class lost all its images: a :class:`DataSourceError` naming some."""
    n = len(source)
    failed = reader.failed
    if n and len(reader) == 0:
        first = "; ".join(f"{f['ident']}: {f['reason']}" for f in failed[:3])
        raise DataSourceError(f"none of the {n} images of '{source.name}' could be decoded ({first}"
                              f"{' ...' if len(failed) > 3 else ''}); check the files and their format")
    if failed and source.class_names:
        have = set(np.unique(reader.labels).tolist())
        lost = sorted({s.label for s in source.samples if s.label >= 0} - have)
        if lost:
            names = [source.class_names[k] if k < len(source.class_names) else str(k) for k in lost]
            raise DataSourceError(f"'{source.name}': every image of class {', '.join(map(repr, names[:5]))} failed to "
                                  f"decode (listed in {reader.dir / MANIFEST}); fix or remove that class folder")
    return reader


def _extract_range(writer: CacheWriter, source: ImageSource, backbone: Backbone, fields: Sequence[str], start: int,
                   stop: int | None, batch_size: int, workers: int, advance: Any = None,
                   max_batches: int | None = None) -> int:
    """Decode + forward + write samples ``start:stop``; the cache write of batch k overlaps batch k+1's forward."""
    samples = source.samples
    done = 0
    with ThreadPoolExecutor(max_workers=1) as write_pool:  # numpy and file I/O release the GIL
        pending: Future | None = None
        for k, (idx, batch, failed, stats) in enumerate(_batches(source, backbone, start, batch_size, workers, stop)):
            arrays = _select(backbone.forward(batch), fields) if batch is not None else {}
            if pending is not None:
                pending.result()
            pending = write_pool.submit(_write_in_order, writer, samples, idx, arrays, dict(failed), stats)
            done += len(idx) + len(failed)
            if advance is not None:
                advance(len(idx) + len(failed))
            if max_batches is not None and k + 1 >= max_batches:
                break
        if pending is not None:
            pending.result()
    return done


def _repair(writer: CacheWriter, source: ImageSource, backbone: Backbone, fields: Sequence[str], batch_size: int,
            workers: int) -> set[str]:
    """Re-extract the committed shards that are damaged or whose source files changed; returns the shard
    files known good (verified or just written) so the reader does not hash them again."""
    d = writer.dir
    reader = CacheReader(d, check_files=False)
    problems = reader.verify(full=True)
    redo: dict[int, str] = {p.shard: f"{p.file}: {p.message}" for p in problems if p.shard is not None}
    if reader.manifest.shards:
        now = [file_stat(s.ident) for s in source.samples]
        for i, k in reader.changed_shards(now).items():
            redo.setdefault(i, f"{k} source file(s) changed since extraction")
    for i in sorted(redo):
        log.warning("%s: re-extracting shard %d (%s)", d, i, redo[i])
        start, stop = writer.begin_rewrite(i)
        _extract_range(writer, source, backbone, fields, start, stop, batch_size, workers)
        writer.end_rewrite()
    return reader._verified | writer.written


def extract_split(
    source: ImageSource,
    backbone: Backbone,
    cache_root: str | Path | None = None,
    split: str = "split",
    fields: Sequence[str] | None = None,
    batch_size: int = 64,
    options: Mapping[str, Any] | None = None,
    shard_size: int | None = None,
    shard_mb: float = 256.0,
    workers: int | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    commit_rows: int | None = COMMIT_ROWS,
    commit_seconds: float | None = COMMIT_SECONDS,
    lock_timeout: float | None = None,
    meta: Mapping[str, Any] | None = None,
) -> CacheReader:
    """Extract ``fields`` of every sample of ``source`` with ``backbone`` into the feature cache.

    Returns a :class:`~tagood.cache.CacheReader`. Re-running with the same source, backbone and
    options returns the cached entry without work, after checking it: shards that fail their
    checksum or whose source files changed (size / mtime) are re-extracted. An interrupted run
    resumes; shards are committed every ``commit_rows`` samples / ``commit_seconds`` / ``shard_mb``
    (``shard_size``: exactly that many samples each), so a kill loses at most one such shard.
    A second process extracting the same entry waits for the first (``lock_timeout`` seconds,
    ``None`` = as long as it takes) and then finds it done. ``max_batches`` stops early without
    marking the entry complete (used to test resumption). Several GPUs: one process per GPU under
    ``torchrun`` (:mod:`tagood.runtime.distributed`), each extracting its own part. Raises
    :class:`~tagood.data.source.DataSourceError` when every image fails to decode or a labelled
    class loses all its images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fields = list(fields or backbone.outputs)
    if "tag_attention" in fields and "tag_ids" not in fields:
        fields.append("tag_ids")
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    key = cache_key(backbone.id, backbone.weights_hash, backbone.transform_id, source.fingerprint(), {"fields": sorted(fields), **(options or {})})
    d = entry_dir(root, split, key)
    n = len(source)
    if n == 0:
        raise DataSourceError(f"source '{source.name}' is empty; nothing to extract")
    workers = workers if workers is not None else decode_workers()
    w = world()
    if w.distributed:
        return _extract_distributed(source, backbone, root, split, key, d, fields, batch_size, shard_size or commit_rows or COMMIT_ROWS,
                                    shard_mb, workers, progress, max_batches, lock_timeout, meta, w)
    return _extract_local(source, backbone, root, split, key, d, fields, batch_size, shard_size, shard_mb, workers, progress,
                          max_batches, commit_rows, commit_seconds, lock_timeout, meta)


def _extract_local(source: ImageSource, backbone: Backbone, root: Path, split: str, key: dict[str, Any], d: Path,
                   fields: list[str], batch_size: int, shard_size: int | None, shard_mb: float, workers: int, progress: bool,
                   max_batches: int | None, commit_rows: int | None, commit_seconds: float | None,
                   lock_timeout: float | None, meta: Mapping[str, Any] | None) -> CacheReader:
    """One process extracts (or repairs, or just returns) the whole entry ``d``, holding its lock."""
    n = len(source)
    lock = EntryLock(d, lock_timeout)
    try:
        lock.acquire()
    except CacheError:
        if (d / MANIFEST).exists() and not os.access(d, os.W_OK):  # a read-only shared cache: use it, checked
            reader = CacheReader(d)
            if reader.complete:
                log.info("cache hit (read-only cache, not locked): %s", d)
                return _check_result(reader, source)
        raise
    try:
        _set_aside_damaged(d)
        writer = CacheWriter.open(root, split, key, n_source=n, shard_size=shard_size, shard_mb=shard_mb,
                                  meta={"source": source.name, "class_names": source.class_names, **(meta or {})},
                                  commit_rows=commit_rows, commit_seconds=commit_seconds, lock=lock)
        good = _repair(writer, source, backbone, fields, batch_size, workers) if writer.manifest.shards else set()
        if writer.complete:
            m = writer.manifest
            log.info("cache hit: %s (%d samples, %d failed)", d, m.n_samples, len(m.failed))
            return _check_result(CacheReader(d, verified=good), source)
        start = writer.next_index
        if start:
            log.info("resuming %s at sample %d of %d", d, start, n)
        t0 = time.perf_counter()
        with progress_bar(f"extract {split}", total=n, completed=start, enabled=progress, unit="img") as advance:
            done = _extract_range(writer, source, backbone, fields, start, None, batch_size, workers, advance, max_batches)
        if max_batches is not None and writer._covered_to < n:
            writer.commit()
            return CacheReader(d, verified=good | writer.written)
        elapsed = time.perf_counter() - t0
        reader = writer.finish(meta={"seconds": elapsed, "images_per_s": done / elapsed if elapsed > 0 else None})
        reader._verified |= good
    finally:
        lock.release()
    if reader.failed:
        log.warning("%s: %d of %d images could not be decoded (listed in %s)", split, len(reader.failed), n, d / MANIFEST)
    return _check_result(reader, source)


def _set_aside_damaged(d: Path) -> None:
    if (d / MANIFEST).exists():
        try:
            Manifest.load(d / MANIFEST)
        except CacheError as e:
            log.warning("%s; the damaged manifest is kept as %s and the split is extracted again",
                        str(e).split(";")[0], set_aside_manifest(d).name)


def _link(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s bytes: a hard link (no copy, same file system), else a copy renamed into place."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        atomic_copy(src, dst)


def _part_ranges(n: int, start: int, size: int, shard: int) -> list[tuple[int, int]]:
    """Each rank's contiguous source range of ``[start, n)``, cut at multiples of ``shard`` past ``start``."""
    out = []
    for r in range(size):
        a, b = split_range(n - start, size, r, align=shard)
        out.append((start + a, start + b))
    return out


def _extract_distributed(source: ImageSource, backbone: Backbone, root: Path, split: str, key: dict[str, Any], d: Path,
                         fields: list[str], batch_size: int, shard: int, shard_mb: float, workers: int, progress: bool,
                         max_batches: int | None, lock_timeout: float | None, meta: Mapping[str, Any] | None,
                         w: World) -> CacheReader:
    """Extraction by every rank of a torchrun world into one cache entry.

    Rank 0 takes the entry's write lock and reads how far the entry got; the rest of the source is cut into
    one contiguous range per rank at multiples of ``shard`` samples. Each rank extracts its range into its own
    part, ``<entry>/parts/part-<start>-<stop>-<key hash>/`` (a resumable cache entry of its own, with its own
    lock, shards of exactly ``shard`` samples), so a rank killed mid-way resumes after its last committed shard
    when the job is launched again, and ranks that had finished do no work. After a barrier, rank 0 links the
    parts' shards into the entry in source order and commits the manifest once, then removes the parts. With
    shards of ``shard`` samples from sample 0 the entry is the same, shard for shard and byte for byte, as one
    process extracting with ``shard_size=shard``. A complete entry is checked (and repaired) by rank 0 alone.
    """
    init(str(getattr(backbone, "device", "cpu")))
    n = len(source)
    lock: EntryLock | None = None
    entry: CacheWriter | None = None
    decision: tuple[str, int] = ("extract", 0)
    if w.is_main:
        lock = EntryLock(d, lock_timeout).acquire()
        try:
            _set_aside_damaged(d)
            entry = CacheWriter.open(root, split, key, n_source=n, shard_size=shard, shard_mb=shard_mb,
                                     meta={"source": source.name, "class_names": source.class_names, **(meta or {})},
                                     commit_rows=None, commit_seconds=None, lock=lock)
        except BaseException:
            lock.release()
            raise
        decision = ("hit", entry.next_index) if entry.complete else ("extract", entry.next_index)
        if entry.complete:
            lock.release()
    decision = broadcast(decision)
    if decision[0] == "hit":
        reader = _extract_local(source, backbone, root, split, key, d, fields, batch_size, shard, shard_mb, workers,
                                progress, None, None, None, lock_timeout, meta) if w.is_main else None
        barrier()
        return reader if reader is not None else _check_result(CacheReader(d), source)
    ranges = _part_ranges(n, decision[1], w.size, shard)
    a, b = ranges[w.rank]
    done_part = True
    t0 = time.perf_counter()
    if b > a:
        part = CacheWriter.open(d / "parts", f"part-{a:010d}-{b:010d}", key, n_source=b, shard_size=shard, shard_mb=shard_mb,
                                commit_rows=None, commit_seconds=None, lock_timeout=lock_timeout, start=a)
        try:
            if not part.complete:
                if part.next_index > a:
                    log.info("rank %d: resuming its part [%d, %d) at sample %d", w.rank, a, b, part.next_index)
                with progress_bar(f"extract {split} (rank {w.rank}/{w.size})", total=b - a,
                                  completed=part.next_index - a, enabled=progress and w.is_main, unit="img") as advance:
                    _extract_range(part, source, backbone, fields, part.next_index, b, batch_size, workers, advance,
                                   max_batches)
                if part._covered_to < b:
                    part.commit()
                    done_part = False
                else:
                    part.finish()
        finally:
            part.close()
    elapsed = time.perf_counter() - t0
    status = all_gather((done_part, elapsed))
    if w.is_main:
        assert entry is not None and lock is not None
        try:
            if all(ok for ok, _ in status):
                _merge_parts(entry, d, ranges, key)
                secs = max(t for _, t in status)
                m = entry.manifest
                entry.manifest.meta.update({"seconds": secs, "world_size": w.size,
                                            "images_per_s": (n - decision[1]) / secs if secs > 0 else None})
                if m.next_index != n:
                    raise CacheError(f"{d}: the parts cover samples up to {m.next_index} of {n}")
                entry.finish()
                shutil.rmtree(d / "parts", ignore_errors=True)
            else:
                log.info("%s: not every rank finished its part; run the same command again to resume", d)
        finally:
            entry.close()
            lock.release()
    barrier()
    reader = CacheReader(d)
    if reader.complete:
        if reader.failed and w.is_main:
            log.warning("%s: %d of %d images could not be decoded (listed in %s)", split, len(reader.failed), n, d / MANIFEST)
        return _check_result(reader, source)
    return reader


def _merge_parts(entry: CacheWriter, d: Path, ranges: list[tuple[int, int]], key: dict[str, Any]) -> None:
    """Append every part's shards to ``entry``'s manifest in source order, linked under the entry's shard names
    (rank 0, holding the entry's lock; the parts stay until the manifest is written)."""
    m = entry.manifest
    for a, b in ranges:
        if b <= a:
            continue
        pdir = entry_dir(d / "parts", f"part-{a:010d}-{b:010d}", key)
        pm = Manifest.load(pdir / MANIFEST)
        if not pm.complete or pm.start != m.next_index:
            raise CacheError(f"{pdir}: part [{pm.start}, {pm.n_source}) is incomplete or out of order "
                             f"(entry at sample {m.next_index}); run the same command again")
        for s in pm.shards:
            name = f"shard-{len(m.shards):05d}.safetensors"
            info = replace(s, file=name)
            _link(pdir / s.file, d / name)
            _link(pdir / s.sidecar, d / info.sidecar)
            m.shards.append(info)
        m.failed.extend(pm.failed)
        for f, spec in pm.fields.items():
            m.fields.setdefault(f, spec)
    entry._covered_to = m.next_index


class CachedImageStream:
    """Preprocessed images of the samples stored in a cache entry, in cache order (for ODIN).

    Only samples that decoded at extraction time are included, so it aligns with the cached
    features sample for sample.
    """

    def __init__(self, source: ImageSource, backbone: Backbone, indices: np.ndarray, workers: int | None = None) -> None:
        self.source = source
        self.backbone = backbone
        self.indices = np.asarray(indices, dtype=np.int64)
        self.workers = workers if workers is not None else decode_workers()

    def __len__(self) -> int:
        return len(self.indices)

    def part(self, start: int, stop: int) -> "CachedImageStream":
        """The stream of rows ``start:stop`` (a rank's share of a split, :func:`tagood.runtime.distributed.score`)."""
        return CachedImageStream(self.source, self.backbone, self.indices[start:stop], self.workers)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Preprocessed batches in order; the decode pool works one batch ahead of the consumer (ODIN's gradient
        pass does not keep every core busy, so decoding the next batch meanwhile hides most of its cost)."""
        chunks = [self.indices[a : a + batch_size] for a in range(0, len(self.indices), batch_size)]
        for imgs in _chunks_ahead(lambda i: self.backbone.preprocess(self.source.load(i)), chunks, self.workers):
            yield np.stack(imgs)
