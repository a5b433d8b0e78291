"""Extraction by one process: extract, resume, repair or just return a cache entry, holding its lock.

An interrupted extraction resumes after its last committed shard; a finished one does no work. A later call
(cache hit or resume) stats the source files again and re-extracts only the shards whose files changed, and
re-extracts shards that fail their checksum; a damaged manifest is set aside and the entry extracted again. The
entry's write lock (:class:`tagood.cache.EntryLock`) is held throughout.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tagood.cache import (
    MANIFEST,
    CacheError,
    CacheReader,
    CacheWriter,
    EntryLock,
    Manifest,
    file_stat,
    set_aside_manifest,
)
from tagood.core.types import Backbone
from tagood.data.source import ImageSource
from tagood.extract.pipeline import check_result, extract_range
from tagood.runtime.progress import progress_bar

log = logging.getLogger(__name__)


def _repair(writer: CacheWriter, source: ImageSource, backbone: Backbone, fields: Sequence[str], batch_size: int,
            workers: int) -> set[str]:
    """Re-extract the committed shards that are damaged or whose source files changed.

    Returns:
        The shard files known good (verified or just written), so the reader does not hash them again.
    """
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
        extract_range(writer, source, backbone, fields, start, stop, batch_size, workers)
        writer.end_rewrite()
    return set(reader.verified) | writer.written


def extract_local(source: ImageSource, backbone: Backbone, root: Path, split: str, key: dict[str, Any], d: Path,
                  fields: list[str], batch_size: int, shard_size: int | None, shard_mb: float, workers: int, progress: bool,
                  max_batches: int | None, commit_rows: int | None, commit_seconds: float | None,
                  lock_timeout: float | None, meta: Mapping[str, Any] | None) -> CacheReader:
    """One process extracts (or repairs, or just returns) the whole entry ``d``, holding its lock.

    A complete entry on a read-only cache (its lock cannot be taken) is used as it is, checked.

    Args:
        source: the images.
        backbone: the model.
        root: the cache root.
        split: the split's name.
        key: the entry's key.
        d: the entry's directory (``entry_dir(root, split, key)``).
        fields: the backbone outputs stored.
        batch_size: samples per forward pass.
        shard_size: exactly this many samples per shard (``None``: the commit policy).
        shard_mb: commit every this many MB.
        workers: decode threads.
        progress: show a progress bar.
        max_batches: stop after this many batches without marking the entry complete.
        commit_rows: commit every this many samples.
        commit_seconds: commit this many seconds after the last commit.
        lock_timeout: how long to wait for another writer (``None``: as long as it takes).
        meta: added to the manifest's ``meta``.

    Returns:
        A reader of the entry (complete unless ``max_batches`` stopped it).
    """
    n = len(source)
    lock = EntryLock(d, lock_timeout)
    try:
        lock.acquire()
    except CacheError:
        if (d / MANIFEST).exists() and not os.access(d, os.W_OK):  # a read-only shared cache: use it, checked
            reader = CacheReader(d)
            if reader.complete:
                log.info("cache hit (read-only cache, not locked): %s", d)
                return check_result(reader, source)
        raise
    try:
        set_aside_damaged(d)
        writer = CacheWriter.open(root, split, key, n_source=n, shard_size=shard_size, shard_mb=shard_mb,
                                  meta={"source": source.name, "class_names": source.class_names, **(meta or {})},
                                  commit_rows=commit_rows, commit_seconds=commit_seconds, lock=lock)
        good = _repair(writer, source, backbone, fields, batch_size, workers) if writer.manifest.shards else set()
        if writer.complete:
            m = writer.manifest
            log.info("cache hit: %s (%d samples, %d failed)", d, m.n_samples, len(m.failed))
            return check_result(CacheReader(d, verified=good), source)
        start = writer.next_index
        if start:
            log.info("resuming %s at sample %d of %d", d, start, n)
        t0 = time.perf_counter()
        with progress_bar(f"extract {split}", total=n, completed=start, enabled=progress, unit="img") as advance:
            done = extract_range(writer, source, backbone, fields, start, None, batch_size, workers, advance, max_batches)
        if max_batches is not None and writer.covered_to < n:
            writer.commit()
            return CacheReader(d, verified=good | writer.written)
        elapsed = time.perf_counter() - t0
        reader = writer.finish(meta={"seconds": elapsed, "images_per_s": done / elapsed if elapsed > 0 else None})
        reader.mark_verified(good)
    finally:
        lock.release()
    if reader.failed:
        log.warning("%s: %d of %d images could not be decoded (listed in %s)", split, len(reader.failed), n, d / MANIFEST)
    return check_result(reader, source)


def set_aside_damaged(d: Path) -> None:
    """Set the manifest of entry ``d`` aside (logged) when it fails its checks, so the entry is extracted again.

    Args:
        d: the entry's directory; the caller holds its lock.
    """
    if (d / MANIFEST).exists():
        try:
            Manifest.load(d / MANIFEST)
        except CacheError as e:
            log.warning("%s; the damaged manifest is kept as %s and the split is extracted again",
                        str(e).split(";")[0], set_aside_manifest(d).name)

