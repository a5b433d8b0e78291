"""The manifest of a cache entry (``manifest.json`` plus its commit log ``manifest.log``) and its list of committed
shards (:class:`ShardInfo`).

A commit does not rewrite ``manifest.json`` (whose size grows with the number of shards): it appends one line to
``manifest.log`` (:func:`append_log`), so its cost does not depend on how many shards the entry already has. Each log
line is a JSON object naming the checksum of the ``manifest.json`` it extends (``base``), its position in the log
(``seq``), the shards and failed samples it adds and the field specs, sealed by a SHA-256 of its own canonical JSON
(``sum``). :meth:`Manifest.load` reads ``manifest.json`` and applies the log's lines in order: a torn or damaged
**last** line (a writer killed while appending) is ignored, a damaged line before the last one is a
:class:`~tagood.errors.CacheError`, and a log whose ``base`` is not the current manifest's checksum (left behind by a
compaction killed before it removed the log) is ignored as a whole. The writer compacts the log into ``manifest.json``
(atomic rewrite, then the log is removed) when it finishes the entry, on a shard rewrite and when it resumes an entry.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagood.cache.keys import FORMAT_VERSION, canonical_hash
from tagood.errors import CacheError

log = logging.getLogger(__name__)

#: Name of the manifest file inside an entry.
MANIFEST = "manifest.json"
#: Name of the manifest's commit log inside an entry (one JSON line per commit since the last compaction).
MANIFEST_LOG = "manifest.log"
#: Version of the log-line format.
LOG_VERSION = 1


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
    def load(cls, path: Path, log_lines: bool = True) -> Manifest:
        """Read and check a manifest and apply its commit log (:data:`MANIFEST_LOG` beside it, when present).

        Args:
            path: the ``manifest.json`` file.
            log_lines: apply the commit log (``False``: ``manifest.json`` alone, as last compacted).

        Returns:
            The manifest, with the shards the log adds.

        Raises:
            CacheError: it cannot be read, is of another format, was modified or is inconsistent, or a log line
                before the last one is damaged.
        """
        m, checksum = cls._load_json(path)
        if log_lines:
            lines = read_log(path.parent / MANIFEST_LOG, checksum)
            for line in lines:
                m.apply_log_line(line)
            if lines:
                m.check(path.parent / MANIFEST_LOG)
        return m

    def apply_log_line(self, line: dict[str, Any]) -> None:
        """Add the shards, failed samples and field specs of one commit-log line (as :func:`log_line` made it).

        Args:
            line: the decoded line.
        """
        self.shards.extend(ShardInfo(**sh) for sh in line["shards"])
        self.failed.extend(line.get("failed", []))
        for f, spec in dict(line.get("fields", {})).items():
            self.fields.setdefault(f, spec)

    @classmethod
    def _load_json(cls, path: Path) -> tuple[Manifest, str]:
        """Read and check ``manifest.json``: its own SHA-256 (any edit is caught), its format and its structure.

        Args:
            path: the ``manifest.json`` file.

        Returns:
            The manifest and its checksum.

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
        return m, str(d["checksum"])


def log_line(manifest_checksum: str, seq: int, shards: list[ShardInfo], failed: list[dict[str, Any]],
             fields: dict[str, dict[str, Any]]) -> bytes:
    """One commit-log line (UTF-8 JSON ending in a newline), sealed by the SHA-256 of its canonical JSON.

    Args:
        manifest_checksum: the checksum of the ``manifest.json`` the log extends.
        seq: the line's position in the log (0 for the first line).
        shards: the shards this commit adds.
        failed: the failed samples it adds.
        fields: the entry's field specs.

    Returns:
        The bytes to append.
    """
    d: dict[str, Any] = {"v": LOG_VERSION, "base": manifest_checksum, "seq": int(seq),
                         "shards": [dict(s.__dict__) for s in shards], "failed": list(failed), "fields": dict(fields)}
    d["sum"] = canonical_hash(d)
    return (json.dumps(d, separators=(",", ":"), default=str) + "\n").encode()


def _decode_line(raw: bytes, base: str, seq: int) -> dict[str, Any] | str:
    """The decoded line, or why it is not a valid line ``seq`` of a log extending ``base``."""
    if not raw.endswith(b"\n"):
        return "torn (no line end)"
    try:
        d = json.loads(raw)
    except ValueError:
        return "not JSON"
    if not isinstance(d, dict) or d.get("sum") != canonical_hash({k: v for k, v in d.items() if k != "sum"}):
        return "checksum mismatch"
    if d.get("v") != LOG_VERSION or d.get("seq") != seq or not isinstance(d.get("shards"), list):
        return f"not line {seq} of format {LOG_VERSION}"
    if d.get("base") != base:
        return "stale"
    return d


def read_log(path: Path, manifest_checksum: str) -> list[dict[str, Any]]:
    """The valid lines of a commit log that extends the manifest of checksum ``manifest_checksum``.

    A torn or damaged last line is ignored (a writer killed while appending it: its shard is not committed). A log
    whose first line names another manifest is stale (a compaction killed before it removed the log) and ignored.

    Args:
        path: the ``manifest.log`` file (missing: no lines).
        manifest_checksum: the checksum of the ``manifest.json`` beside it.

    Returns:
        The decoded lines, in order.

    Raises:
        CacheError: a line before the last one is damaged.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CacheError(f"cannot read the cache manifest log {path} ({e.strerror}); make it readable, or run "
                         f"`tagood cache verify --repair`") from e
    parts = raw.splitlines(keepends=True)
    out: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        d = _decode_line(part, manifest_checksum, i)
        if d == "stale" and i == 0:
            log.debug("%s extends another manifest (a compaction was interrupted): ignored", path)
            return []
        if isinstance(d, str):
            if i == len(parts) - 1:
                log.info("%s: last line %s (a commit interrupted): ignored", path, d)
                break
            raise CacheError(f"cache manifest log {path} is damaged at line {i + 1} ({d}); run `tagood cache verify "
                             f"--repair` or delete {path.parent} and re-extract")
        out.append(d)
    return out


def append_log(path: Path, line: bytes) -> int:
    """Append one line to a commit log and sync it to disk.

    Args:
        path: the ``manifest.log`` file (created when missing).
        line: the bytes of :func:`log_line`.

    Returns:
        The number of bytes written.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return len(line)
