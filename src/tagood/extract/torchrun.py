"""Extraction by every rank of a torchrun world into one cache entry: each rank its own part, then one merge.

``torchrun --nproc-per-node N -m tagood extract ...``: each rank extracts a contiguous range of the source into
a part of its own (a resumable cache entry under ``<entry>/parts/``); rank 0 then links the parts' shards into
the entry in source order and commits its manifest once (:func:`merge_parts`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from tagood.cache import MANIFEST, CacheError, CacheReader, CacheWriter, EntryLock, Manifest, ShardInfo, entry_dir
from tagood.core.types import Backbone
from tagood.data.source import ImageSource
from tagood.extract.local import extract_local, set_aside_damaged
from tagood.extract.pipeline import check_result, extract_range
from tagood.runtime.distributed import World, all_gather, barrier, broadcast, init, split_range
from tagood.runtime.fileio import atomic_copy
from tagood.runtime.progress import progress_bar

log = logging.getLogger(__name__)


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


def extract_distributed(source: ImageSource, backbone: Backbone, root: Path, split: str, key: dict[str, Any], d: Path,
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

    Args:
        source: the images (the same on every rank).
        backbone: the model (on this rank's device).
        root: the cache root.
        split: the split's name.
        key: the entry's key.
        d: the entry's directory.
        fields: the backbone outputs stored.
        batch_size: samples per forward pass.
        shard: samples per shard (the parts' cut points are multiples of it).
        shard_mb: commit every this many MB.
        workers: decode threads.
        progress: show rank 0's progress bar.
        max_batches: stop each rank after this many batches (used to test resumption).
        lock_timeout: how long to wait for another writer.
        meta: added to the manifest's ``meta``.
        w: the torchrun world.

    Returns:
        A reader of the entry on every rank (complete once every rank finished its part).
    """
    init(str(getattr(backbone, "device", "cpu")))
    n = len(source)
    lock: EntryLock | None = None
    entry: CacheWriter | None = None
    decision: tuple[str, int] = ("extract", 0)
    if w.is_main:
        lock = EntryLock(d, lock_timeout).acquire()
        try:
            set_aside_damaged(d)
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
        reader = extract_local(source, backbone, root, split, key, d, fields, batch_size, shard, shard_mb, workers,
                               progress, None, None, None, lock_timeout, meta) if w.is_main else None
        barrier()
        return reader if reader is not None else check_result(CacheReader(d), source)
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
                    extract_range(part, source, backbone, fields, part.next_index, b, batch_size, workers, advance,
                                  max_batches)
                if part.covered_to < b:
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
                merge_parts(entry, d, ranges, key)
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
        return check_result(reader, source)
    return reader


def merge_parts(entry: CacheWriter, d: Path, ranges: list[tuple[int, int]], key: dict[str, Any]) -> None:
    """Append every part's shards to ``entry``'s manifest in source order, linked under the entry's shard names
    (rank 0, holding the entry's lock; the parts stay until the manifest is written).

    Args:
        entry: the entry's writer, positioned at the first part's start.
        d: the entry's directory.
        ranges: each rank's source range ``(start, stop)``, in order (empty ones are skipped).
        key: the entry's key (the parts are keyed by it too).

    Raises:
        CacheError: a part is incomplete or does not start where the entry stops.
    """
    m = entry.manifest
    for a, b in ranges:
        if b <= a:
            continue
        pdir = entry_dir(d / "parts", f"part-{a:010d}-{b:010d}", key)
        pm = Manifest.load(pdir / MANIFEST)
        if not pm.complete or pm.start != m.next_index:
            raise CacheError(f"{pdir}: part [{pm.start}, {pm.n_source}) is incomplete or out of order "
                             f"(entry at sample {m.next_index}); run the same command again")
        linked: list[ShardInfo] = []
        for s in pm.shards:
            info = replace(s, file=f"shard-{len(m.shards) + len(linked):05d}.safetensors")
            _link(pdir / s.file, d / info.file)
            _link(pdir / s.sidecar, d / info.sidecar)
            linked.append(info)
        entry.append_shards(linked, pm.failed, pm.fields)

