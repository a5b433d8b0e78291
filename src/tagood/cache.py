"""Feature cache: sharded safetensors, fp16 features, ragged token sets, resumable (DESIGN section 5).

Layout of one cache entry (one split extracted by one backbone with one set of options)::

    <root>/<split>-<keyhash>/
        manifest.json              key, field specs, committed shards, failed samples, complete flag
        shard-00000.safetensors    dense fields "<name>" (count, ...), ragged fields
                                   "<name>.values" (sum_n, D), "<name>.offsets" (count+1,),
                                   "<name>.positions" (sum_n,), plus "index" and "label" (count,)
        shard-00000.json           sample identifiers (paths) of that shard

* The **key** is ``(backbone id, weights hash, transform, dataset fingerprint, options)``; its hash
  names the directory, so a cache built with other options is never silently reused.
* Writes are **atomic**: a shard (and its sidecar) is written to a temp file and renamed, then the
  manifest is rewritten (temp + rename) to list it. A shard is only ever read if the manifest
  lists it, so a kill at any moment leaves a consistent cache; extraction resumes after the last
  committed shard and a finished entry is never recomputed.
* Readers **memory-map** shards (the safetensors header is parsed here and the data region mapped
  with ``numpy.memmap``) and can stream them shard by shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
from safetensors.numpy import save_file

from tagood.types import FeatureSet, TagAttention, TokenSet

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1

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


class CacheError(Exception):
    """A cache entry is unusable (corrupt manifest, missing shard, key mismatch)."""


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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` atomically (temp file in the same directory + rename)."""
    _atomic_write_bytes(path, json.dumps(obj, indent=1, default=str).encode())


def _atomic_save_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def mmap_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file as a read-only numpy array (no copy)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CacheError(f"cannot read safetensors header of {path}: {e}; delete the cache entry and re-extract") from e
    header.pop("__metadata__", None)
    base = 8 + n
    size = path.stat().st_size
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if base + end > size:
            raise CacheError(f"{path} is truncated (tensor {name}); delete the cache entry and re-extract")
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

    @property
    def next_index(self) -> int:
        return self.shards[-1].stop if self.shards else 0

    @property
    def n_samples(self) -> int:
        return sum(s.count for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "split": self.split,
            "n_source": self.n_source,
            "shards": [s.__dict__ for s in self.shards],
            "failed": self.failed,
            "fields": self.fields,
            "complete": self.complete,
            "meta": self.meta,
        }

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        try:
            d = json.loads(path.read_text())
            return cls(
                key=d["key"],
                split=d["split"],
                n_source=d["n_source"],
                shards=[ShardInfo(**s) for s in d["shards"]],
                failed=d.get("failed", []),
                fields=d.get("fields", {}),
                complete=d.get("complete", False),
                meta=d.get("meta", {}),
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CacheError(f"corrupt cache manifest {path}: {e}; delete {path.parent} and re-extract") from e


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
    """Append samples to a cache entry, committing a shard every ``shard_size`` samples.

    Use :meth:`open` to create or resume an entry. ``add`` takes a batch: ``indices`` (source
    indices, increasing), ``labels``, ``idents``, and ``arrays`` = {field: array}; a field whose
    value is a list of per-sample ``(tokens (n_i,D), positions (n_i,))`` pairs or a
    :class:`TokenSet` is stored ragged. ``skip`` records a sample that failed to decode.
    """

    def __init__(self, directory: Path, manifest: Manifest, shard_size: int | None, shard_mb: float) -> None:
        self.dir = directory
        self.manifest = manifest
        self.shard_size = shard_size
        self.shard_mb = shard_mb
        self._buf: list[dict[str, Any]] = []  # blocks of rows, already in storage dtype
        self._buf_failed: list[dict[str, Any]] = []
        self._buffered = 0
        self._row_nbytes: int | None = None
        self._covered_to = manifest.next_index

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
    ) -> "CacheWriter":
        d = entry_dir(root, split, key)
        d.mkdir(parents=True, exist_ok=True)
        for tmp in d.glob(".*.tmp"):  # leftovers of a killed write
            tmp.unlink(missing_ok=True)
        mpath = d / MANIFEST
        if mpath.exists():
            m = Manifest.load(mpath)
            if m.key != json.loads(json.dumps(key, default=str)):
                raise CacheError(f"cache entry {d} was built with another key; delete it and re-extract")
            if m.n_source != n_source:
                raise CacheError(f"cache entry {d} expects {m.n_source} source samples, the source has {n_source}")
            listed = {s.file for s in m.shards}
            for stale in d.glob("shard-*.safetensors"):  # written but never committed
                if stale.name not in listed:
                    stale.unlink(missing_ok=True)
                    stale.with_suffix(".json").unlink(missing_ok=True)
        else:
            m = Manifest(key=json.loads(json.dumps(key, default=str)), split=split, n_source=n_source, meta=dict(meta or {}))
            atomic_write_json(mpath, m.to_json())
        return cls(d, m, shard_size, shard_mb)

    @property
    def next_index(self) -> int:
        """First source index not yet covered by a committed shard."""
        return self.manifest.next_index

    @property
    def complete(self) -> bool:
        return self.manifest.complete

    # -- writing ----------------------------------------------------------------------------
    def add(self, indices: np.ndarray, labels: np.ndarray, idents: list[str], arrays: Mapping[str, Any]) -> None:
        """Append a batch (source indices increasing); fields are converted to their storage dtype once per batch."""
        indices = np.asarray(indices, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        n, start = len(indices), 0
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

    def skip(self, index: int, ident: str, reason: str) -> None:
        """Record a sample that could not be decoded; it is reported, never stored."""
        self._buf_failed.append({"index": int(index), "ident": ident, "reason": reason})
        self._covered_to = int(index) + 1

    def _room(self, arrays: Mapping[str, Any], n: int) -> int:
        """Rows that still fit in the current shard."""
        if self.shard_size is not None:
            return max(1, self.shard_size - self._buffered)
        if self._row_nbytes is None:
            probe = {k: _to_storage(k, _rows(v, slice(0, 1))) for k, v in arrays.items()}
            self._row_nbytes = max(1, sum(_nbytes(v) for v in probe.values()))
        return max(1, int(self.shard_mb * 2**20 // self._row_nbytes) - self._buffered)

    def _shard_full(self) -> bool:
        if self._buffered == 0:
            return False
        if self.shard_size is not None:
            return self._buffered >= self.shard_size
        return self._buffered * (self._row_nbytes or 1) >= self.shard_mb * 2**20

    def _commit(self) -> None:
        if not self._buf and not self._buf_failed:
            return
        blocks = self._buf
        i = len(self.manifest.shards)
        name = f"shard-{i:05d}.safetensors"
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
        start = self.manifest.next_index
        _atomic_save_safetensors(self.dir / name, tensors)
        atomic_write_json((self.dir / name).with_suffix(".json"), idents)
        self.manifest.shards.append(ShardInfo(file=name, start=start, stop=self._covered_to, count=len(idents)))
        self.manifest.failed.extend(self._buf_failed)
        atomic_write_json(self.dir / MANIFEST, self.manifest.to_json())
        self._buf, self._buf_failed, self._buffered = [], [], 0

    def finish(self, meta: Mapping[str, Any] | None = None) -> "CacheReader":
        """Commit the last shard, mark the entry complete and return a reader."""
        self._commit()
        if self.manifest.next_index != self.manifest.n_source:
            raise CacheError(
                f"{self.dir}: finished at source index {self.manifest.next_index} of {self.manifest.n_source}"
            )
        self.manifest.complete = True
        self.manifest.meta.update(meta or {})
        atomic_write_json(self.dir / MANIFEST, self.manifest.to_json())
        return CacheReader(self.dir)


class CacheReader:
    """Read a cache entry: memory-mapped shards, streamed or concatenated."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        mpath = self.dir / MANIFEST
        if not mpath.exists():
            raise CacheError(f"no cache manifest in {self.dir}; run `tagood extract` first")
        self.manifest = Manifest.load(mpath)
        self._shards: dict[str, dict[str, np.ndarray]] = {}

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
            raise CacheError(f"cache shard {path} is missing; delete {self.dir} and re-extract")
        arrays = mmap_safetensors(path)
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
            out.extend(json.loads((self.dir / s.file).with_suffix(".json").read_text()))
        return out

    def nbytes(self) -> int:
        """Bytes of the stored shards (fp16 on disk: loading a field as float32 takes about twice this)."""
        return sum((self.dir / s.file).stat().st_size for s in self.manifest.shards if (self.dir / s.file).exists())

    def _check_fields(self, fields: list[str]) -> None:
        for f in fields:
            if f not in self.fields:
                raise KeyError(f"cache {self.dir} has no field '{f}' (has {sorted(self.fields)})")

    def _shard_featureset(self, raw: dict[str, np.ndarray], fields: list[str]) -> FeatureSet:
        """One shard's samples as a FeatureSet: dense fields as float32, ragged ones memory-mapped (fp16)."""
        dec = self._decode(raw)
        kw: dict[str, Any] = {}
        for f in fields:
            if f == "tag_ids":
                continue
            if f == "tag_attention":
                kw[f] = TagAttention(np.asarray(dec["tag_ids"]).astype(np.int64), np.asarray(dec[f], dtype=np.float32))
            elif isinstance(dec[f], TokenSet) or f not in FeatureSet.__dataclass_fields__:
                kw[f] = dec[f]
            elif f in ("tokens", "patch_embeds"):  # stored dense (every image has all its tokens)
                kw[f] = TokenSet.from_dense(np.asarray(dec[f]))
            else:
                kw[f] = np.asarray(dec[f], dtype=np.float32)
        extra = {f: kw.pop(f) for f in list(kw) if f not in FeatureSet.__dataclass_fields__}
        return FeatureSet(labels=np.asarray(dec["label"]), extra=extra, **kw)

    def iter_featuresets(self, fields: list[str]) -> Iterator[tuple[int, FeatureSet]]:
        """Stream the requested fields shard by shard: ``(first sample, FeatureSet of that shard)``.

        Only one shard's dense fields are in memory at a time; token sets stay memory-mapped fp16."""
        self._check_fields(fields)
        start = 0
        for i in self._nonempty():
            fs = self._shard_featureset(self.shard(i, keep=False), fields)
            yield start, fs
            start += len(fs.labels)

    def to_featureset(self, fields: list[str] | None = None, name: str = "", stream: Iterable[str] = ()) -> FeatureSet:
        """A FeatureSet of the requested fields (default: all). ``tag_ids``+``tag_attention`` become a TagAttention.

        Fields named in ``stream`` are not loaded: the FeatureSet streams them shard by shard
        (:meth:`tagood.types.FeatureSet.iter_chunks`), so a split larger than memory (ImageNet
        train's tokens) can be used; see :func:`heavy_fields` for the usual choice."""
        fields = list(self.fields) if fields is None else fields
        self._check_fields(fields)
        streamed = [f for f in fields if f in set(stream) and f != "tag_ids"]
        kw: dict[str, Any] = {}
        for f in fields:
            if f == "tag_ids" or f in streamed:
                continue
            if f == "tag_attention":
                kw["tag_attention"] = TagAttention(self.array("tag_ids", None).astype(np.int64), self.array("tag_attention"))
            elif f in ("tokens", "patch_embeds"):
                kw[f] = self.tokens(f)
            elif f in FeatureSet.__dataclass_fields__:
                kw[f] = self.array(f)
        extra = {f: self.array(f) for f in fields if f not in FeatureSet.__dataclass_fields__ and f != "tag_ids" and f not in streamed}
        fs = FeatureSet(labels=self.labels, paths=self.idents, name=name or self.manifest.split, extra=extra, **kw)
        if streamed:
            chunk_fields = streamed + (["tag_ids"] if "tag_attention" in streamed else [])
            fs.chunks = lambda: self.iter_featuresets(chunk_fields)
            fs.streamed = frozenset(streamed)
            log.info("cache %s: streaming %s shard by shard (%d samples)", self.dir.name, streamed, len(self))
        return fs


#: Fields that grow with tokens or tag vocabulary per image: the ones worth streaming.
HEAVY_FIELDS: frozenset[str] = frozenset({"tokens", "patch_embeds", "tag_probs", "tag_attention"})


def heavy_fields(reader: CacheReader, fields: list[str], max_gb: float | None) -> list[str]:
    """The fields of ``fields`` to stream: the heavy ones (:data:`HEAVY_FIELDS`) when loading the split
    as float32 would take more than ``max_gb`` GiB (about twice its fp16 size on disk); ``None``
    never streams, ``0`` always does."""
    if max_gb is None:
        return []
    if 2 * reader.nbytes() <= max_gb * 2**30 and max_gb > 0:
        return []
    return [f for f in fields if f in HEAVY_FIELDS]
