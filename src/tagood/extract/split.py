"""The extraction entry point, :func:`extract_split`: one split of an image source into the feature cache.

It builds the entry's key and directory, then extracts in this process (:mod:`tagood.extract.local`) or, under
``torchrun``, with every rank extracting its own part (:mod:`tagood.extract.torchrun`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tagood.backbones.home import default_cache_root
from tagood.cache import COMMIT_ROWS, COMMIT_SECONDS, CacheReader, cache_key, entry_dir, superset_entry
from tagood.core.types import Backbone
from tagood.data.source import DataSourceError, ImageSource
from tagood.errors import ConfigError
from tagood.extract.local import extract_local
from tagood.extract.torchrun import extract_distributed
from tagood.runtime.distributed import world
from tagood.runtime.threads import decode_workers


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

    Re-running with the same source, backbone and options returns the cached entry without work, after
    checking it: shards that fail their checksum or whose source files changed (size / mtime) are
    re-extracted. An interrupted run resumes; shards are committed every ``commit_rows`` samples /
    ``commit_seconds`` / ``shard_mb`` (``shard_size``: exactly that many samples each), so a kill loses at
    most one such shard. A second process extracting the same entry waits for the first and then finds it
    done. Several GPUs: one process per GPU under ``torchrun`` (:mod:`tagood.runtime.distributed`), each
    extracting its own part.

    Args:
        source: the images (an :class:`~tagood.data.source.ImageSource`: a folder, a list file, arrays).
        backbone: the model; its ``id``, ``weights_hash`` and ``transform_id`` key the entry.
        cache_root: the cache root (``None``: :func:`tagood.backbones.home.default_cache_root`).
        split: the split's name (names the entry's directory).
        fields: the backbone outputs to store (``None``: all of ``backbone.outputs``); ``tag_attention``
            brings ``tag_ids``.
        batch_size: samples per forward pass.
        options: anything else that changes what is stored (part of the key).
        shard_size: exactly this many samples per shard (``None``: the commit policy below).
        shard_mb: commit a shard every this many MB.
        workers: decode threads (``None``: :func:`tagood.runtime.threads.decode_workers`).
        progress: show a progress bar.
        max_batches: stop after this many batches without marking the entry complete (used to test
            resumption).
        commit_rows: commit a shard every this many samples.
        commit_seconds: commit a shard this many seconds after the last one.
        lock_timeout: how long to wait for another process writing the entry, in seconds (``None``: as long
            as it takes).
        meta: added to the manifest's ``meta`` (``tagood extract`` records how to rebuild the entry).

    Returns:
        A :class:`~tagood.cache.CacheReader` of the entry.

    Raises:
        ValueError: ``batch_size`` < 1.
        DataSourceError: the source is empty, every image fails to decode, or a labelled class loses all
            its images.
        CacheError: the entry cannot be written (locked by another writer past ``lock_timeout``, a read-only
            or lock-less file system).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fields = list(fields or backbone.outputs)
    unknown = [f for f in fields if f not in backbone.outputs and not (f == "tag_ids" and "tag_attention" in backbone.outputs)]
    if unknown:  # before any lock, entry or decode
        raise ConfigError(f"fields {', '.join(map(repr, unknown))} (--fields): the backbone {backbone.id} gives "
                          f"{', '.join(backbone.outputs)}; name some of those, comma-separated")
    if "tag_attention" in fields and "tag_ids" not in fields:
        fields.append("tag_ids")
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    key = cache_key(backbone.id, backbone.weights_hash, backbone.transform_id, source.fingerprint(),
                    {"fields": sorted(fields), **(options or {})})
    d = entry_dir(root, split, key)
    reuse = superset_entry(root, split, key)  # a complete entry holding more fields: read it, extract nothing
    if reuse is not None:
        d, key, fields = reuse
    n = len(source)
    if n == 0:
        raise DataSourceError(f"source '{source.name}' is empty; nothing to extract")
    workers = workers if workers is not None else decode_workers()
    w = world()
    if w.distributed:
        return extract_distributed(source, backbone, root, split, key, d, fields, batch_size,
                                   shard_size or commit_rows or COMMIT_ROWS, shard_mb, workers, progress, max_batches,
                                   lock_timeout, meta, w)
    return extract_local(source, backbone, root, split, key, d, fields, batch_size, shard_size, shard_mb, workers, progress,
                         max_batches, commit_rows, commit_seconds, lock_timeout, meta)

