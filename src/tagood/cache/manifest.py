"""The manifest of a cache entry (``manifest.json``) and its list of committed shards (:class:`ShardInfo`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagood.cache.keys import FORMAT_VERSION, canonical_hash
from tagood.errors import CacheError

#: Name of the manifest file inside an entry.
MANIFEST = "manifest.json"


@dataclass
class ShardInfo:
    """One committed shard as the manifest lists it (written to ``manifest.json`` field for field).

    Args:
        file: the shard's file name, ``shard-NNNNN.safetensors`` (a rewritten shard has a suffix).
        start: first source index covered by this shard.
        stop: one past the last source index covered.
        count: samples stored (covered minus failed).
        bytes: size of the safetensors file.
        sha256: SHA-256 of the safetensors file.
        sidecar_sha256: SHA-256 of the sidecar JSON (idents + file stats).
    """

    file: str
    start: int  # first source index covered by this shard
    stop: int  # one past the last source index covered
    count: int  # samples stored (covered minus failed)
    bytes: int = 0  # size of the safetensors file
    sha256: str = ""  # of the safetensors file
    sidecar_sha256: str = ""  # of the sidecar JSON (idents + file stats)

    @property
    def sidecar(self) -> str:
        """File name of the shard's sidecar JSON (``shard-NNNNN.json``)."""
        return self.file[: -len(".safetensors")] + ".json" if self.file.endswith(".safetensors") else self.file + ".json"


@dataclass
class Manifest:
    """The manifest of one cache entry: what it holds and which shards are committed.

    It is written with a SHA-256 of its own canonical JSON (``checksum``), so :meth:`load` catches any
    edit. A shard is only ever read if the manifest lists it.

    Args:
        key: the entry's key (:func:`tagood.cache.keys.cache_key`, as JSON).
        split: the split's name.
        n_source: number of samples in the source (one past the last index covered).
        shards: the committed shards, contiguous and in source order.
        failed: samples that could not be decoded: ``{"index", "ident", "reason"}``.
        fields: stored field -> spec (``{"kind": "dense", "dtype", "shape"}`` or
            ``{"kind": "ragged", "dtype", "dim"}``).
        complete: every source sample is covered.
        meta: free information (source name, class names, extraction time, recipe).
        start: first source index covered: 0 for an entry; a rank's part of a torchrun extraction
            (:mod:`tagood.extract`) covers ``[start, n_source)`` only.
    """

    key: dict[str, Any]
    split: str
    n_source: int
    shards: list[ShardInfo] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    complete: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    start: int = 0

    @property
    def next_index(self) -> int:
        """First source index not covered by a committed shard."""
        return self.shards[-1].stop if self.shards else self.start

    @property
    def n_samples(self) -> int:
        """Samples stored (failed ones are not)."""
        return sum(s.count for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        """The manifest as written to ``manifest.json``, with its ``checksum``.

        Returns:
            A JSON-able dict.
        """
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
        d["checksum"] = canonical_hash(d)
        return d

    def check(self, where: Path) -> None:
        """Structural checks: contiguous shards, counts that agree with the failures, a complete entry covers all.

        Args:
            where: the manifest's path (named in the error).

        Raises:
            CacheError: a check fails.
        """
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
    def load(cls, path: Path) -> Manifest:
        """Read and check a manifest: its own SHA-256 (any edit is caught), its format and its structure.

        Args:
            path: the ``manifest.json`` file.

        Returns:
            The manifest.

        Raises:
            CacheError: it cannot be read, is of another format, was modified or is inconsistent.
        """
        fix = f"run `tagood cache verify --repair` or delete {path.parent} and re-extract"
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            version = d.get("version", 1)
            if version != FORMAT_VERSION:
                raise CacheError(f"cache manifest {path} has format {version}, this tagood reads format {FORMAT_VERSION}; "
                                 f"delete {path.parent} (`tagood cache rm`) and re-extract")
            if d.get("checksum") != canonical_hash({k: v for k, v in d.items() if k != "checksum"}):
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
