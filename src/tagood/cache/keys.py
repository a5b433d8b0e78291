"""Cache keys and hashing: the key of an entry, its directory name, file digests and source file stats.

The key is ``(backbone id, weights hash, transform, dataset fingerprint, options)`` plus the format
version; its hash names the entry's directory, so a cache built with other options is never silently
reused, and an entry of another format is re-extracted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Version of the on-disk format (checksums, file stats); part of every key and manifest.
FORMAT_VERSION = 2


def cache_key(
    backbone_id: str, weights_hash: str, transform_id: str, dataset_fingerprint: str, options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The key that identifies one cache entry.

    Args:
        backbone_id: the backbone's architecture id (``Backbone.id``).
        weights_hash: the exact weights (``Backbone.weights_hash``, a SHA-256 prefix).
        transform_id: the preprocessing (``Backbone.transform_id``).
        dataset_fingerprint: the source's fingerprint (``ImageSource.fingerprint()``).
        options: anything else that changes what is stored (the fields, extraction options).

    Returns:
        A JSON-able dict with the format version; :func:`entry_dir` names the entry after its hash.
    """
    return {
        "format": FORMAT_VERSION,
        "backbone": backbone_id,
        "weights": weights_hash,
        "transform": transform_id,
        "dataset": dataset_fingerprint,
        "options": dict(sorted((options or {}).items())),
    }


def key_hash(key: Mapping[str, Any]) -> str:
    """The first 16 hex digits of the SHA-256 of ``key`` as canonical JSON (sorted keys).

    Args:
        key: a key made by :func:`cache_key`.

    Returns:
        16 hex digits, the suffix of the entry's directory name.
    """
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def entry_dir(root: str | Path, split: str, key: Mapping[str, Any]) -> Path:
    """Directory of the cache entry for ``split`` under ``key``.

    Args:
        root: the cache root.
        split: the split's name (characters other than ``A-Za-z0-9_.+-`` become ``_``).
        key: the entry's key (:func:`cache_key`).

    Returns:
        ``<root>/<split>-<key hash>``.
    """
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", split).strip("_") or "split"
    return Path(root) / f"{safe}-{key_hash(key)}"


def sha256_file(path: str | Path, chunk: int = 8 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks.

    Args:
        path: the file.
        chunk: bytes read at a time.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def file_stat(ident: str) -> list[int] | None:
    """The size and modification time of a source file, recorded with its shard to detect changes.

    Args:
        ident: a sample identifier (a file path, or a name such as ``fashion-mnist:12``).

    Returns:
        ``[size, mtime_ns]`` of the file ``ident`` names (symlinks followed), ``None`` when it is not a
        file (an in-memory sample, or a file that is gone).
    """
    try:
        st = os.stat(ident)
    except (OSError, ValueError):
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


def canonical_hash(obj: Any) -> str:
    """SHA-256 hex digest of ``obj`` as canonical JSON (sorted keys): a manifest's own checksum.

    Args:
        obj: a JSON-able object.

    Returns:
        The hex digest.
    """
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()

