"""Feature cache: sharded safetensors, fp16 features, ragged token sets; checksummed, locked, resumable.

Layout of one cache entry (one split extracted by one backbone with one set of options)::

    <root>/<split>-<keyhash>/
        manifest.json              key, field specs, committed shards (+ byte size and SHA-256 of each),
                                   failed samples, complete flag, and a SHA-256 of the manifest itself
        manifest.log               while extracting: one checksummed JSON line per commit since manifest.json
                                   was last written (compacted into it when the entry is finished)
        shard-00000.safetensors    dense fields "<name>" (count, ...), ragged fields
                                   "<name>.values" (sum_n, D), "<name>.offsets" (count+1,),
                                   "<name>.positions" (sum_n,), plus "index" and "label" (count,)
        shard-00000.json           {"idents": sample identifiers (paths) of the stored samples,
                                    "stats": [size, mtime_ns] of every source file the shard covers}
        .lock                      advisory write lock (fcntl.flock) + "pid host time" of its holder

* The **key** is ``(backbone id, weights hash, transform, dataset fingerprint, options)``; its hash
  names the directory, so a cache built with other options is never silently reused. Format
  version 2 (checksums, file stats) is part of the key: entries of format 1 are re-extracted.
* Writes are **atomic**: a shard (and its sidecar) is written to a temp file and renamed, then a line
  listing it is appended to ``manifest.log`` (a commit's cost does not grow with the shards before it; a torn
  last line is ignored). A shard is only ever read if the manifest
  lists it, so a kill at any moment leaves a consistent cache; extraction resumes after the last
  committed shard and a finished entry is never recomputed. A shard is committed every
  ``commit_rows`` samples (256), every ``commit_seconds`` (10 s; the first after 3 s) or every ``shard_mb`` (256 MB),
  whichever comes first, so a kill loses at most that much work.
* **Integrity**: opening an entry checks the manifest's own checksum (an edited ``count`` is
  caught), that every listed shard exists with its recorded byte size, and each shard's header
  when it is mapped; :meth:`CacheReader.verify` (``full=True``) also re-hashes the shards.
  A damaged or missing shard raises :class:`CacheError` naming the file before its data is used.
* **Locking**: one writer per entry (:class:`EntryLock`); a second one waits (or fails after
  ``lock_timeout``) and never deletes files the first one wrote.
* Readers **memory-map** shards (the safetensors header is parsed here and the data region mapped
  with ``numpy.memmap``) and can stream them shard by shard.

Modules, one concept each: :mod:`~tagood.cache.keys` (the key and hashing), :mod:`~tagood.cache.lock`
(the entry lock), :mod:`~tagood.cache.manifest` (the manifest and its shard list),
:mod:`~tagood.cache.shards` (shard files: atomic safetensors writes, memory-mapped reads),
:mod:`~tagood.cache.writer`, :mod:`~tagood.cache.reader`, :mod:`~tagood.cache.admin` (list, remove,
set a damaged manifest aside) and :mod:`~tagood.cache.superset` (reading a complete entry that holds more fields than
asked for). This package re-exports their public names.
"""

from __future__ import annotations

from tagood.cache.admin import EntryInfo, list_entries, remove_entry, set_aside_manifest
from tagood.cache.keys import FORMAT_VERSION, cache_key, entry_dir, file_stat, key_hash, sha256_file
from tagood.cache.lock import LOCK_FILE, EntryLock
from tagood.cache.manifest import MANIFEST, Manifest, ShardInfo
from tagood.cache.reader import HEAVY_FIELDS, STREAM_ABOVE_GB, CacheReader, Problem, heavy_fields
from tagood.cache.shards import mmap_safetensors
from tagood.cache.superset import superset_entry
from tagood.cache.writer import COMMIT_ROWS, COMMIT_SECONDS, FP16_FIELDS, CacheWriter
from tagood.errors import CacheError

__all__ = [
    "COMMIT_ROWS",
    "COMMIT_SECONDS",
    "FORMAT_VERSION",
    "FP16_FIELDS",
    "HEAVY_FIELDS",
    "LOCK_FILE",
    "MANIFEST",
    "STREAM_ABOVE_GB",
    "CacheError",
    "CacheReader",
    "CacheWriter",
    "EntryInfo",
    "EntryLock",
    "Manifest",
    "Problem",
    "ShardInfo",
    "cache_key",
    "entry_dir",
    "file_stat",
    "heavy_fields",
    "key_hash",
    "list_entries",
    "mmap_safetensors",
    "remove_entry",
    "set_aside_manifest",
    "sha256_file",
    "superset_entry",
]
