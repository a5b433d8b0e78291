"""FeatureSet: everything cached for one split, as one view over chunks of consecutive samples.

A split held in memory is one chunk. A split read from the feature cache with some fields streamed
(ImageNet-1K train's tokens do not fit in memory) keeps its light fields (labels, paths, logits,
...) in memory and yields the streamed ones shard by shard; :meth:`FeatureSet.iter_chunks` gives
every chunk with all of its fields, so a consumer (``Detector.score``, TagOOD's training
decomposition, the diagnostics) has one code path for both.

The mapping from the cache's stored field names (``label``, ``tag_ids`` + ``tag_attention``, dense
or ragged ``tokens``, ...) to FeatureSet fields is :func:`from_arrays`, used for a whole split as
for one shard; :func:`from_cache` builds a FeatureSet from a cache reader with it. The cache itself
only stores and yields arrays (:meth:`tagood.cache.CacheReader.arrays` /
:meth:`~tagood.cache.CacheReader.iter_arrays`).

Detectors read FeatureSets and return OOD scores, **higher = more OOD**.
This module imports :mod:`tagood.core.types` only (numpy types), never the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import numpy as np

from tagood.core.images import ImageStream
from tagood.core.types import INPUT_FIELDS, TagAttention, TokenSet
from tagood.errors import InputError

log = logging.getLogger(__name__)

#: FeatureSet attributes that are not per-sample data
_META = ("chunks", "streamed", "extra", "name")
#: cache fields stored dense ``(N, n, D)`` that a FeatureSet holds as a TokenSet
_TOKEN_FIELDS = ("tokens", "patch_embeds")


def take_rows(v: Any, rows: np.ndarray | slice, n: int | None = None, keep: bool = False) -> Any:
    """Rows ``rows`` of one per-sample value of ``n`` samples (default ``len(v)``): a TokenSet, TagAttention,
    list or array; a value that is not per sample (an image stream, a scalar) is kept as is with ``keep``
    (``extra`` entries), else dropped (``None``)."""
    if n is None:
        n = len(v)
    if isinstance(v, TokenSet):
        return v.select(np.arange(len(v))[rows] if isinstance(rows, slice) else rows)
    if isinstance(v, TagAttention):
        return TagAttention(np.asarray(v.ids)[rows], np.asarray(v.maps)[rows])
    if isinstance(v, list) and len(v) == n:
        return v[rows] if isinstance(rows, slice) else [v[int(i)] for i in rows]
    if isinstance(v, np.ndarray) and v.ndim and len(v) == n:
        return v[rows]
    return v if keep else None


def concat_rows(parts: Sequence[Any], cast: bool = False) -> Any:
    """The per-sample values of consecutive chunks as one; token values float32 when ``cast``."""
    if isinstance(parts[0], TokenSet):
        ts = TokenSet.concat(list(parts))
        return TokenSet(ts.values.astype(np.float32), ts.offsets, ts.positions) if cast else ts
    if isinstance(parts[0], TagAttention):
        return TagAttention(np.concatenate([p.ids for p in parts]), np.concatenate([p.maps for p in parts]))
    if isinstance(parts[0], list):
        return [x for p in parts for x in p]
    return np.concatenate(parts)


@dataclass
class FeatureSet:
    """Everything cached for one split (IND train, IND test, or one OOD set), sample-aligned.

    Fields are optional; a detector declares which it needs (``Detector.requires``, names in
    :data:`tagood.core.types.INPUT_FIELDS`) and scores them with **higher = more OOD**. Arrays are
    numpy; they may be memory-mapped views of the feature cache.

    A streamed split: the fields named in ``streamed`` are not held (they are ``None`` here) and
    ``chunks()`` yields ``(start, FeatureSet)`` for consecutive sample ranges holding them. Read it
    with :meth:`iter_chunks`, which adds the held fields to each chunk; a split that is not
    streamed is one chunk.

    Attributes:
        labels: ``(N,)`` int64 IND class ids ``0..C-1``; -1 = unknown / OOD.
        logits: ``(N, C)`` logits. From an image extraction they are the backbone's own (ImageNet's 1000
            classes); ``tagood bench`` scores logit-based detectors on an IND linear head's
            (:func:`tagood.detectors.head.with_head_logits`).
        features: ``(N, D)`` pooled penultimate features.
        tokens: the spatial token sets, a ragged :class:`~tagood.core.types.TokenSet` (sample ``i`` has
            ``n_i`` tokens of dimension ``Dt``).
        tag_probs: ``(N, T)`` tagger probabilities over its tag vocabulary.
        tag_attention: the attention maps of each sample's top-k tags over its tokens, a
            :class:`~tagood.core.types.TagAttention`.
        block_norms: ``(N, B)`` per-block feature norms (FeatureNorm).
        images: the preprocessed images, a :class:`~tagood.core.images.ImageStream` (ODIN and KR-NFT read them).
        image_embeds: ``(N, E)`` dual-encoder (CLIP) image embeddings.
        patch_embeds: dual-encoder patch embeddings, a TokenSet.
        paths: one identifier per sample (its image's path, for a split extracted from images).
        name: the split's name, used in messages and logs.
        extra: other per-sample arrays by name (cache fields FeatureSet does not know).
        chunks: for a streamed split, a callable yielding ``(start, FeatureSet)`` chunks holding the
            streamed fields; ``None`` otherwise.
        streamed: the names of the fields that ``chunks`` yields instead of this object holding them.

    Example:
        >>> import numpy as np
        >>> fs = FeatureSet(features=np.zeros((4, 3)), labels=np.array([0, 1, 0, 1]), name="toy")
        >>> len(fs), fs.has("features"), fs.has("logits")
        (4, True, False)
        >>> fs.subset(np.array([1, 3])).labels
        array([1, 1])
    """

    labels: np.ndarray | None = None  # (N,) int64, -1 = unknown / OOD
    logits: np.ndarray | None = None
    features: np.ndarray | None = None
    tokens: TokenSet | None = None
    tag_probs: np.ndarray | None = None
    tag_attention: TagAttention | None = None
    block_norms: np.ndarray | None = None
    images: ImageStream | None = None
    image_embeds: np.ndarray | None = None
    patch_embeds: TokenSet | None = None
    paths: list[str] | None = None
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    chunks: Callable[[], Iterator[tuple[int, FeatureSet]]] | None = None
    streamed: frozenset[str] = frozenset()

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_chunks(cls, parts: Sequence[FeatureSet], name: str = "", hold: Collection[str] = ("labels", "paths")) -> FeatureSet:
        """A streamed FeatureSet over in-memory ``parts`` (consecutive samples, each with the same fields):
        the fields named in ``hold`` are concatenated and held, the others stay in the parts and come
        back chunk by chunk. Scores and results equal those of the concatenated split.

        Args:
            parts: the chunks, in sample order, each with the same fields.
            name: the split's name (default: the first part's).
            hold: the fields to concatenate and hold; at least one of them must be in the parts (so the split
                knows its length).

        Returns:
            The FeatureSet; streamed over ``parts`` unless every field is held.

        Raises:
            ValueError: ``parts`` is empty, or none of the ``hold`` fields is in the parts.
        """
        if not parts:
            raise ValueError("FeatureSet.from_chunks needs at least one part")
        names = [f.name for f in fields(cls) if f.name not in _META and getattr(parts[0], f.name) is not None]
        held = {f: concat_rows([getattr(p, f) for p in parts], cast=False) for f in names if f in hold}
        if not held:
            raise ValueError(f"FeatureSet.from_chunks: hold at least one field the parts have (hold={sorted(hold)}, "
                             f"parts have {names}), e.g. labels, so the split knows its length")
        streamed = frozenset(f for f in names if f not in hold)
        starts = np.concatenate([[0], np.cumsum([len(p) for p in parts])])

        def chunks() -> Iterator[tuple[int, FeatureSet]]:
            # starts has one more entry than parts (the end of the last part): zip stops at the last part.
            for start, p in zip(starts, parts, strict=False):
                yield int(start), cls(**{f: getattr(p, f) for f in streamed})

        out = cls(name=name or parts[0].name, **held)
        if streamed:
            out.chunks, out.streamed = chunks, streamed
        return out

    # -- shape and contents -----------------------------------------------------------------------
    def __len__(self) -> int:
        for name in ("labels", "logits", "features", "tag_probs", "block_norms", "image_embeds",
                     "tokens", "tag_attention", "patch_embeds", "images", "paths"):
            v = getattr(self, name)
            if v is not None:
                return len(v)
        return 0

    def has(self, name: str) -> bool:
        """Whether this split has the field ``name``: held, streamed, or an ``extra`` entry.

        Args:
            name: a field name (``"features"``, ``"logits"``, ...) or an ``extra`` key.

        Returns:
            True when the split has it.
        """
        return getattr(self, name, None) is not None or name in self.extra or name in self.streamed

    def require(self, names: Iterable[str], who: str) -> None:
        """Check that the split has every field of ``names`` (:meth:`has`).

        Args:
            names: the fields needed.
            who: who needs them, for the message (e.g. a detector's name).

        Raises:
            InputError: a field is missing; the message names the missing fields, those the split has, and how to
                give them.
        """
        missing = [n for n in names if not self.has(n)]
        if missing:
            example = ", ".join(f"{n}=..." for n in sorted(missing))
            raise InputError(
                f"{who} needs inputs {sorted(missing)} but the feature set '{self.name}' only has "
                f"{sorted(n for n in INPUT_FIELDS if self.has(n))}: pass tagood.FeatureSet({example}) with your own "
                f"arrays, or extract them from images with tagood.extract_features(...) and a backbone that gives them"
            )

    def with_(self, **kw: Any) -> FeatureSet:
        """A copy with some attributes replaced (:func:`dataclasses.replace`); the others are shared, not copied.

        Args:
            **kw: attribute name -> new value, e.g. ``logits=head(fs.features)``.

        Returns:
            The new FeatureSet.
        """
        return replace(self, **kw)

    def is_streamed(self, names: Iterable[str] | None = None) -> bool:
        """Whether any of the fields ``names`` is streamed rather than held.

        Args:
            names: the fields to ask about (default: any field).

        Returns:
            True when one of them is streamed.
        """
        if self.chunks is None or not self.streamed:
            return False
        return True if names is None else bool(self.streamed & set(names))

    def _held(self) -> dict[str, Any]:
        """The held per-sample fields (not streamed, not None)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _META and f.name not in self.streamed and getattr(self, f.name) is not None}

    # -- the one view over chunks -------------------------------------------------------------------
    def iter_chunks(self, needs: Iterable[str] | None = None) -> Iterator[FeatureSet]:
        """Consecutive in-memory chunks of this split in sample order, each holding every field (the
        streamed ones from their source, the held ones sliced). A split that is not streamed -- or
        whose fields ``needs`` are all held -- is one chunk (then without its streamed fields).

        Args:
            needs: the fields the caller reads (default: all); when all of them are held, the split is
                one chunk and nothing is streamed.

        Yields:
            FeatureSets of consecutive samples, not streamed, together covering the split.

        Raises:
            RuntimeError: the streamed source yields chunks out of order or not covering the split.
        """
        if not self.is_streamed(needs):
            yield self.with_(chunks=None, streamed=frozenset()) if self.is_streamed() else self
            return
        assert self.chunks is not None
        n, done = len(self), 0
        held = self._held()
        for start, part in self.chunks():
            stop = start + len(part)
            if start != done or stop > n:
                raise RuntimeError(f"feature set '{self.name}': chunk [{start}, {stop}) out of order "
                                   f"(expected start {done}, {n} samples)")
            sl = slice(start, stop)
            kw = {f: take_rows(v, sl, n) for f, v in held.items() if getattr(part, f) is None}
            extra = {k: take_rows(v, sl, n, keep=True) for k, v in self.extra.items()}
            done = stop
            yield part.with_(name=self.name, extra={**extra, **part.extra}, chunks=None, streamed=frozenset(), **kw)
        if done != n:
            raise RuntimeError(f"feature set '{self.name}': chunks cover {done} of {n} samples")

    def derive(self, name: str, fn: Callable[[FeatureSet], Any], needs: Iterable[str]) -> FeatureSet:
        """Set field ``name`` to ``fn(chunk)`` from the fields ``needs`` (e.g. patch embeddings from the
        tokens): computed once when they are held, chunk by chunk on each pass when one is streamed
        (:meth:`derive_streamed`). In place.

        Args:
            name: the field to set.
            fn: computes the field's value of a FeatureSet (the whole split, or one chunk) from its ``needs``.
            needs: the fields ``fn`` reads.

        Returns:
            ``self``.
        """
        if self.is_streamed(needs):
            return self.derive_streamed(name, fn)
        setattr(self, name, fn(self))
        return self

    def derive_streamed(self, name: str, fn: Callable[[FeatureSet], Any]) -> FeatureSet:
        """Add field ``name`` computed chunk by chunk from a streamed split, ``fn(chunk)`` (e.g. patch
        embeddings from the streamed tokens): it becomes a streamed field itself, computed again on each
        pass, never held for the whole split. In place.

        Args:
            name: the field to add.
            fn: computes the field's value of one chunk (a chunk holds the streamed fields only).

        Returns:
            ``self``.

        Raises:
            ValueError: the split is not streamed (then set the field directly).
        """
        if not self.is_streamed() or self.chunks is None:
            raise ValueError(f"feature set '{self.name}' is not streamed; set '{name}' directly")
        base = self.chunks

        def chunks() -> Iterator[tuple[int, FeatureSet]]:
            for start, part in base():
                yield start, part.with_(**{name: fn(part)})

        self.chunks = chunks
        self.streamed = self.streamed | {name}
        return self

    def subset(self, idx: np.ndarray, lazy: bool = False) -> FeatureSet:
        """The samples ``idx`` of this split.

        Args:
            idx: sample indices, sorted, unique and in ``[0, len(self))``.
            lazy: for a streamed split, keep the result streamed: its chunks yield the selected rows of each
                source chunk (for a large selection, e.g. all but a held-out part). By default the streamed
                fields are gathered chunk by chunk into memory, so only the selected rows are ever loaded.

        Returns:
            A new FeatureSet of ``len(idx)`` samples (``extra`` entries subset too).

        Raises:
            ValueError: ``idx`` is not sorted, not unique or out of range.
        """
        idx = np.asarray(idx, dtype=np.int64)
        n = len(self)
        if len(idx) and (np.any(np.diff(idx) <= 0) or idx[0] < 0 or idx[-1] >= n):
            raise ValueError(f"subset of '{self.name}': indices must be sorted, unique and in [0, {n})")
        out = FeatureSet(name=self.name, extra={k: take_rows(v, idx, n, keep=True) for k, v in self.extra.items()},
                         **{f: take_rows(v, idx, n) for f, v in self._held().items()})
        if not self.is_streamed():
            return out
        assert self.chunks is not None
        base, streamed = self.chunks, self.streamed

        def chunks() -> Iterator[tuple[int, FeatureSet]]:  # the selected rows of each chunk, renumbered
            pos = 0
            for start, part in base():
                rows = idx[(idx >= start) & (idx < start + len(part))] - start
                if len(rows):
                    picked = {f: take_rows(getattr(part, f), rows, len(part)) for f in streamed}
                    yield pos, FeatureSet(name=part.name, **{k: v for k, v in picked.items() if v is not None})
                    pos += len(rows)

        out.chunks, out.streamed = chunks, streamed
        return out if lazy else out.load_streamed(cast=False)

    def load_streamed(self, names: Iterable[str] | None = None, cast: bool = True) -> FeatureSet:
        """This split with streamed fields concatenated into memory.

        Args:
            names: the streamed fields to load (default: all); names that are not streamed are ignored.
            cast: token values as float32; ``False`` keeps their stored dtype (e.g. fp16 from the cache).

        Returns:
            A new FeatureSet holding those fields (still streamed in the others), or ``self`` when there is
            nothing to load.
        """
        want = set(self.streamed) if names is None else set(names) & self.streamed
        if not want or self.chunks is None:
            return self
        parts: dict[str, list[Any]] = {f: [] for f in want}
        for _, part in self.chunks():
            for f in want:
                parts[f].append(getattr(part, f))
        kw = {f: concat_rows(vs, cast) for f, vs in parts.items() if vs}
        rest = self.streamed - want
        return self.with_(streamed=frozenset(rest), chunks=self.chunks if rest else None, **kw)


# -- from the feature cache: the one mapping of stored names to FeatureSet fields -----------------------
_FIELDS = frozenset(f.name for f in fields(FeatureSet)) - set(_META)


def from_arrays(arrays: Mapping[str, Any], names: Iterable[str]) -> FeatureSet:
    """A FeatureSet of the cache fields ``names`` from stored arrays (a whole split or one shard).

    ``arrays`` holds ``label``, each name and, with ``tag_attention``, ``tag_ids``: dense arrays,
    ragged fields as TokenSets. The mapping:
    ``label`` -> ``labels``; ``tag_ids`` + ``tag_attention`` -> a :class:`TagAttention` (maps float32);
    ``tokens`` / ``patch_embeds`` stored dense ``(N, n, D)`` -> a TokenSet of every token (positions
    ``0..n-1``), ragged ones as given (values in their stored dtype); other FeatureSet fields float32;
    fields FeatureSet does not know go to ``extra`` (floats as float32). ``tag_ids`` alone is no field."""
    kw: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for f in names:
        v = arrays[f]
        if f == "tag_ids":
            continue
        if f == "tag_attention":
            kw[f] = TagAttention(np.asarray(arrays["tag_ids"]).astype(np.int64), np.asarray(v, dtype=np.float32))
        elif isinstance(v, TokenSet):
            (kw if f in _FIELDS else extra)[f] = v
        elif f in _TOKEN_FIELDS:
            kw[f] = TokenSet.from_dense(np.asarray(v))
        else:
            a = np.asarray(v)
            (kw if f in _FIELDS else extra)[f] = a.astype(np.float32, copy=False) if a.dtype.kind == "f" else a
    return FeatureSet(labels=np.asarray(arrays["label"]), extra=extra, **kw)


class ArrayReader(Protocol):
    """What :func:`from_cache` reads (a :class:`tagood.cache.CacheReader`): stored arrays of a split,
    whole (dense floats as float32) or shard by shard (as stored), each with ``label`` and, for
    ``tag_attention``, ``tag_ids``; ragged fields as TokenSets."""

    @property
    def split(self) -> str: ...

    def __len__(self) -> int: ...

    @property
    def fields(self) -> Mapping[str, Any]: ...

    @property
    def idents(self) -> list[str]: ...

    def arrays(self, names: Sequence[str]) -> dict[str, Any]: ...

    def iter_arrays(self, names: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]: ...


def from_cache(reader: ArrayReader, names: Sequence[str] | None = None, name: str = "", stream: Iterable[str] = ()) -> FeatureSet:
    """A FeatureSet of the cache fields ``names`` (default: all) of one cache entry, with labels and paths.

    Fields named in ``stream`` are not loaded: the FeatureSet streams them shard by shard
    (:meth:`FeatureSet.iter_chunks`; token values stay memory-mapped fp16), so a split larger than
    memory (ImageNet train's tokens) can be used; see :func:`tagood.cache.heavy_fields` for the usual
    choice. The loaded fields are float32 (tokens too)."""
    names = [f for f in (reader.fields if names is None else names) if f != "tag_ids"]  # ids come with their maps
    streamed = [f for f in names if f in set(stream)]
    loaded = [f for f in names if f not in streamed]
    fs = from_arrays(reader.arrays(loaded), loaded).with_(paths=reader.idents, name=name or reader.split)
    if streamed:

        def chunks() -> Iterator[tuple[int, FeatureSet]]:
            for start, arrays in reader.iter_arrays(streamed):
                yield start, from_arrays(arrays, streamed)

        fs.chunks, fs.streamed = chunks, frozenset(streamed)
        log.info("cache %s: streaming %s shard by shard (%d samples)", fs.name, streamed, len(fs))
    return fs
