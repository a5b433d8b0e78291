"""The cache reader (:class:`CacheReader`): checked, memory-mapped shards, streamed or concatenated;
:class:`Problem` (a defect :meth:`CacheReader.verify` finds) and :func:`heavy_fields` (which fields to stream)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tagood.cache.keys import sha256_file
from tagood.cache.manifest import MANIFEST, Manifest
from tagood.cache.shards import mmap_safetensors
from tagood.core.featureset import FeatureSet, from_cache
from tagood.core.types import TokenSet
from tagood.errors import CacheError


@dataclass
class Problem:
    """One defect found by :meth:`CacheReader.verify`.

    Args:
        shard: the shard's index in the manifest (``None`` for the manifest itself).
        file: the damaged file's name inside the entry.
        message: what is wrong.
    """

    shard: int | None
    file: str
    message: str


class CacheReader:
    """Read a cache entry: memory-mapped shards, streamed or concatenated.

    Opening checks the manifest (checksum, structure) and that every listed shard and sidecar exists
    with its recorded size; a shard's header is checked against the manifest when it is mapped, and,
    with ``verify_on_read`` (default), its SHA-256 the first time this reader maps it. Any defect is
    a :class:`CacheError` naming the file, raised before the shard's data is used.

    Args:
        directory: the entry's directory.
        verified: shard files known good (just written or verified), not hashed again.
        verify_on_read: hash each shard the first time it is mapped.
        check_files: check at opening that every listed shard and sidecar exists with its size.

    Raises:
        CacheError: no manifest, a damaged manifest, or (``check_files``) a missing or truncated shard.
    """

    def __init__(self, directory: str | Path, verified: Iterable[str] = (), verify_on_read: bool = True,
                 check_files: bool = True) -> None:
        self.dir = Path(directory)
        mpath = self.dir / MANIFEST
        if not mpath.exists():
            raise CacheError(f"no cache manifest in {self.dir}; run `tagood extract` first")
        self.manifest = Manifest.load(mpath)
        self._shards: dict[str, dict[str, np.ndarray]] = {}
        self._verified: set[str] = set(verified)
        self.verify_on_read = verify_on_read
        if check_files:
            problems = self.verify(full=False)
            if problems:
                raise CacheError(_problems_message(self.dir, problems))

    @property
    def verified(self) -> frozenset[str]:
        """Shard files this reader knows are good (hashed, or written by the writer that opened it)."""
        return frozenset(self._verified)

    def mark_verified(self, files: Iterable[str]) -> None:
        """Record shard files known good (verified or just written elsewhere) so they are not hashed again.

        Args:
            files: shard file names inside the entry.
        """
        self._verified |= set(files)

    def _fix(self) -> str:
        return f"run `tagood cache verify --repair {self.dir}` (or re-run the extraction, which repairs it)"

    def _check_header(self, i: int, raw: Mapping[str, np.ndarray]) -> None:
        info = self.manifest.shards[i]
        path = self.dir / info.file
        n = info.count
        bad: list[str] = []
        for k in ("index", "label"):
            if k not in raw or raw[k].shape != (n,):
                bad.append(f"'{k}' has shape {raw[k].shape if k in raw else None}, the manifest says ({n},)")
        for f, spec in self.fields.items():
            if spec["kind"] == "ragged":
                v, o, p = raw.get(f"{f}.values"), raw.get(f"{f}.offsets"), raw.get(f"{f}.positions")
                if v is None or o is None or p is None or o.shape != (n + 1,) or p.shape[0] != v.shape[0] or (
                        n and (int(o[0]) != 0 or int(o[-1]) != v.shape[0])):
                    bad.append(f"ragged field '{f}' is inconsistent")
            elif f in raw and (raw[f].shape[:1] != (n,) or list(raw[f].shape[1:]) != list(spec["shape"])):
                bad.append(f"'{f}' has shape {raw[f].shape}, expected ({n}, {', '.join(map(str, spec['shape']))})")
        if bad:
            raise CacheError(f"cache shard {path} does not match the manifest ({'; '.join(bad)}); {self._fix()}")

    def verify(self, full: bool = True, shards: Iterable[int] | None = None) -> list[Problem]:
        """Check the listed shards: present, of the recorded size, header consistent with the manifest
        and, with ``full``, the SHA-256 of every shard file and sidecar. Shards that pass a full check
        are not re-hashed by this reader.

        Args:
            full: also compare the SHA-256 of every shard file and sidecar.
            shards: the shards to check (indices into the manifest); ``None``: all.

        Returns:
            The problems found (empty: sound).
        """
        out: list[Problem] = []
        for i in (range(len(self.manifest.shards)) if shards is None else shards):
            info = self.manifest.shards[i]
            path, side = self.dir / info.file, self.dir / info.sidecar
            try:
                size = path.stat().st_size
            except OSError:
                out.append(Problem(i, info.file, "missing"))
                continue
            if not side.is_file():
                out.append(Problem(i, info.sidecar, "missing"))
                continue
            if size != info.bytes:
                out.append(Problem(i, info.file, f"size {size} bytes, the manifest says {info.bytes} (truncated or replaced)"))
                continue
            try:
                self._check_header(i, mmap_safetensors(path))
            except CacheError as e:
                out.append(Problem(i, info.file, str(e).split(";")[0]))
                continue
            if not full:
                continue
            if sha256_file(path) != info.sha256:
                out.append(Problem(i, info.file, "checksum mismatch (the bytes changed since it was written)"))
            elif sha256_file(side) != info.sidecar_sha256:
                out.append(Problem(i, info.sidecar, "checksum mismatch (the sample list changed since it was written)"))
            else:
                self._verified.add(info.file)
        return out

    def file_stats(self, i: int) -> list[list[int] | None]:
        """The source file stats recorded at extraction for every source index shard ``i`` covers.

        Args:
            i: the shard's index in the manifest.

        Returns:
            ``[size, mtime_ns]`` (or ``None``) per covered source index.
        """
        info = self.manifest.shards[i]
        try:
            side = json.loads((self.dir / info.sidecar).read_text())
        except (OSError, ValueError) as e:
            detail = e.strerror if isinstance(e, OSError) else type(e).__name__
            raise CacheError(f"cache sidecar {self.dir / info.sidecar} cannot be read ({detail}); {self._fix()}") from e
        return list(side.get("stats", [])) if isinstance(side, dict) else [None] * (info.stop - info.start)

    def changed_shards(self, current: Sequence[list[int] | None]) -> dict[int, int]:
        """Shards whose source files changed since extraction.

        Args:
            current: ``current[i]`` is the ``[size, mtime_ns]`` of source sample ``i`` now
                (:func:`tagood.cache.keys.file_stat`); a sample whose stat was not recorded (an
                in-memory sample) is never counted as changed.

        Returns:
            ``{shard index: number of changed files}``; a shard whose sidecar is missing or unreadable counts every
            file it covers as changed (it is re-extracted).
        """
        out: dict[int, int] = {}
        for i, info in enumerate(self.manifest.shards):
            try:
                then = self.file_stats(i)
            except CacheError:
                out[i] = info.stop - info.start
                continue
            n = sum(1 for j, old in enumerate(then) if old is not None and list(old) != (current[info.start + j] or None))
            if n:
                out[i] = n
        return out

    def __len__(self) -> int:
        return self.manifest.n_samples

    @property
    def complete(self) -> bool:
        """Whether the entry covers every source sample."""
        return self.manifest.complete

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        """Stored field -> spec (``kind`` dense or ragged, ``dtype``, ``shape`` or ``dim``)."""
        return self.manifest.fields

    @property
    def failed(self) -> list[dict[str, Any]]:
        """Samples that could not be decoded: ``{"index", "ident", "reason"}``."""
        return self.manifest.failed

    def shard(self, i: int, keep: bool = True) -> dict[str, np.ndarray]:
        """Shard ``i`` memory-mapped, checked against the manifest (and hashed, with ``verify_on_read``).

        Args:
            i: the shard's index in the manifest.
            keep: keep the mapping open in this reader (``False``: map it for the caller only).

        Returns:
            Tensor name -> read-only array, as stored.

        Raises:
            CacheError: the shard is missing, truncated, damaged or does not match the manifest.
        """
        info = self.manifest.shards[i]
        if info.file in self._shards:
            return self._shards[info.file]
        path = self.dir / info.file
        if not path.exists():
            raise CacheError(f"cache shard {path} is missing; {self._fix()}")
        if path.stat().st_size != info.bytes:
            raise CacheError(f"cache shard {path} has {path.stat().st_size} bytes, the manifest says {info.bytes}; {self._fix()}")
        if self.verify_on_read and info.file not in self._verified:
            if sha256_file(path) != info.sha256:
                raise CacheError(f"cache shard {path} is damaged (checksum mismatch); {self._fix()}")
            self._verified.add(info.file)
        arrays = mmap_safetensors(path)
        self._check_header(i, arrays)
        if keep:
            self._shards[info.file] = arrays
        return arrays

    def _nonempty(self) -> list[int]:
        return [i for i, s in enumerate(self.manifest.shards) if s.count > 0]

    def iter_shards(self) -> Iterator[dict[str, Any]]:
        """Stream the non-empty shards.

        Returns:
            An iterator of ``{"index", "label", dense fields..., ragged fields as TokenSet}`` per shard.
        """
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
        """A dense field (or ``index``/``label``) concatenated over all shards (loaded into RAM).

        Args:
            name: the field.
            dtype: the dtype of a float field (``None``: as stored).

        Returns:
            ``(N, ...)`` array.

        Raises:
            KeyError: the entry has no dense field ``name``.
        """
        if name not in ("index", "label") and (name not in self.fields or self.fields[name]["kind"] != "dense"):
            raise KeyError(f"cache {self.dir} has no dense field '{name}' (has {sorted(self.fields)})")
        # mapped for the copy only (keep=False): a reader that kept every shard mapped would hold every page it
        # ever touched, the streamed fields' too, in the process's RSS (at ImageNet size, tens of GB of cache)
        parts = [self.shard(i, keep=False)[name] for i in self._nonempty()]
        if name in ("index", "label"):
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)
        arr = np.concatenate(parts) if parts else np.zeros((0, *self.fields[name]["shape"]))
        return arr.astype(dtype) if dtype is not None and arr.dtype.kind == "f" else np.asarray(arr)

    def tokens(self, name: str = "tokens", dtype: Any = np.float32) -> TokenSet:
        """A ragged (or dense ``(N, n, D)``) field concatenated over all shards as one TokenSet (loaded into RAM).

        Args:
            name: the field.
            dtype: the dtype of the token values.

        Returns:
            The TokenSet.

        Raises:
            KeyError: the entry has no field ``name``.
        """
        if name not in self.fields:
            raise KeyError(f"cache {self.dir} has no field '{name}'")
        if self.fields[name]["kind"] == "dense":
            return TokenSet.from_dense(self.array(name, dtype))
        parts = [self._decode(self.shard(i, keep=False))[name] for i in self._nonempty()]
        if not parts:
            return TokenSet(np.zeros((0, self.fields[name].get("dim", 0)), dtype), np.zeros(1, np.int64), np.zeros(0, np.int64))
        ts = TokenSet.concat(parts)
        return TokenSet(ts.values.astype(dtype), ts.offsets, ts.positions)

    @property
    def labels(self) -> np.ndarray:
        """Label of each stored sample (``-1``: unknown)."""
        return self.array("label")

    @property
    def indices(self) -> np.ndarray:
        """Source index of each stored sample (failed samples are absent)."""
        return self.array("index")

    @property
    def idents(self) -> list[str]:
        """Identifier (path) of each stored sample, from the sidecars (checked with ``verify_on_read``)."""
        out: list[str] = []
        for s in self.manifest.shards:
            try:
                raw = (self.dir / s.sidecar).read_bytes()
            except OSError as e:
                raise CacheError(f"cache sidecar {self.dir / s.sidecar} cannot be read ({e.strerror}); {self._fix()}") from e
            if self.verify_on_read and hashlib.sha256(raw).hexdigest() != s.sidecar_sha256:
                raise CacheError(f"cache sidecar {self.dir / s.sidecar} is damaged (checksum mismatch); {self._fix()}")
            side = json.loads(raw)
            ids = side["idents"] if isinstance(side, dict) else side
            if len(ids) != s.count:
                raise CacheError(f"cache sidecar {self.dir / s.sidecar} lists {len(ids)} samples, the manifest says "
                                 f"{s.count}; {self._fix()}")
            out.extend(ids)
        return out

    def nbytes(self) -> int:
        """Bytes of the stored shards (fp16 on disk: loading a field as float32 takes about twice this)."""
        return sum((self.dir / s.file).stat().st_size for s in self.manifest.shards if (self.dir / s.file).exists())

    def _check_fields(self, fields: list[str]) -> None:
        for f in fields:
            if f not in self.fields:
                raise KeyError(f"cache {self.dir} has no field '{f}' (has {sorted(self.fields)})")

    @property
    def split(self) -> str:
        """The split name this entry was extracted for."""
        return self.manifest.split

    def _with_ids(self, names: Sequence[str]) -> list[str]:
        """``names`` checked, plus ``tag_ids`` when ``tag_attention`` is asked for (the maps' tag ids)."""
        names = list(names)
        if "tag_attention" in names and "tag_ids" not in names and "tag_ids" in self.fields:
            names.append("tag_ids")
        self._check_fields(names)
        return names

    def arrays(self, names: Sequence[str], dtype: Any = np.float32) -> dict[str, Any]:
        """The fields ``names`` of every shard concatenated (loaded into RAM): ``label``, dense fields
        (floats as ``dtype``), ragged ones as one TokenSet (values as ``dtype``), and ``tag_ids`` with
        ``tag_attention``. :func:`tagood.core.featureset.from_arrays` makes them a FeatureSet.

        Args:
            names: the fields.
            dtype: the dtype of float fields and token values.

        Returns:
            Field -> array or TokenSet, plus ``label``.
        """
        out: dict[str, Any] = {"label": self.labels}
        for f in self._with_ids(names):
            out[f] = self.tokens(f, dtype) if self.fields[f]["kind"] == "ragged" else self.array(f, dtype)
        return out

    def iter_arrays(self, names: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Stream the fields ``names`` shard by shard: ``(first sample, arrays of that shard)`` with
        ``label``, memory-mapped arrays in their stored dtype (fp16), ragged fields as TokenSets and
        ``tag_ids`` with ``tag_attention``. Only one shard is mapped at a time.

        Args:
            names: the fields.

        Returns:
            An iterator of ``(first sample, arrays)``.
        """
        names = self._with_ids(names)
        start = 0
        for i in self._nonempty():
            dec = self._decode(self.shard(i, keep=False))
            yield start, {"label": dec["label"], **{f: dec[f] for f in names}}
            start += len(dec["label"])

    def to_featureset(self, fields: list[str] | None = None, name: str = "", stream: Iterable[str] = ()) -> FeatureSet:
        """A FeatureSet of the requested fields (default: all), ``stream``-ed ones shard by shard: the
        same as :func:`tagood.core.featureset.from_cache` (where the mapping of stored fields lives).

        Args:
            fields: the cache fields (``None``: all).
            name: the FeatureSet's name (default: the split's).
            stream: fields left on disk and streamed shard by shard.

        Returns:
            The FeatureSet.
        """
        return from_cache(self, fields, name=name, stream=stream)


#: Fields that grow with tokens or tag vocabulary per image: the ones worth streaming.
HEAVY_FIELDS: frozenset[str] = frozenset({"tokens", "patch_embeds", "tag_probs", "tag_attention"})

#: Default limit of :func:`heavy_fields` (the ``stream_above_gb`` option of benchmarks and of
#: ``tagood fit`` / ``score``): a split whose heavy fields would take more than this many GiB as
#: float32 is streamed shard by shard from the cache (``None``: never stream, ``0``: always).
STREAM_ABOVE_GB: float = 8.0


def heavy_fields(reader: CacheReader, fields: list[str], max_gb: float | None = STREAM_ABOVE_GB) -> list[str]:
    """The fields of ``fields`` to stream: the heavy ones (:data:`HEAVY_FIELDS`) when loading the split
    as float32 would take more than ``max_gb`` GiB (about twice its fp16 size on disk; default
    :data:`STREAM_ABOVE_GB`).

    Args:
        reader: the entry.
        fields: the fields wanted.
        max_gb: the limit in GiB; ``None`` never streams, ``0`` always does.

    Returns:
        The heavy fields of ``fields`` to stream (empty: load everything).
    """
    if max_gb is None:
        return []
    if 2 * reader.nbytes() <= max_gb * 2**30 and max_gb > 0:
        return []
    return [f for f in fields if f in HEAVY_FIELDS]


def _problems_message(d: Path, problems: Sequence[Problem]) -> str:
    """The error of an entry that fails its checks: the first three problems and how to repair it."""
    head = "; ".join(f"{d / p.file}: {p.message}" for p in problems[:3])
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return (f"cache entry {d} is damaged: {head}{more}; run `tagood cache verify --repair {d}` "
            "(or re-run the extraction, which re-extracts the damaged shards)")

