"""Extraction pipeline: image source -> backbone -> feature cache, resumable and streaming.

Decoding and preprocessing run in a thread pool (PIL and numpy release the GIL) one batch ahead
of the model forward, so the model is rarely idle. A sample that cannot be decoded is skipped,
recorded in the cache manifest (``failed``) and reported; it never aborts a run. An interrupted
extraction resumes after its last committed shard; a finished one does no work.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from tagood.cache import CacheReader, CacheWriter, cache_key, entry_dir, MANIFEST, Manifest
from tagood.data.source import ImageDecodeError, ImageSource
from tagood.progress import progress_bar
from tagood.types import Backbone, ModelOutput

log = logging.getLogger(__name__)


def default_cache_root() -> Path:
    """``$TAGOOD_CACHE`` or ``$TAGOOD_HOME/features`` or ``~/.cache/tagood/features``."""
    if os.environ.get("TAGOOD_CACHE"):
        return Path(os.environ["TAGOOD_CACHE"])
    home = Path(os.environ.get("TAGOOD_HOME", Path.home() / ".cache" / "tagood"))
    return home / "features"


def _decode_one(source: ImageSource, backbone: Backbone, i: int) -> tuple[int, np.ndarray | None, str | None]:
    try:
        return i, backbone.preprocess(source.load(i)), None
    except ImageDecodeError as e:
        return i, None, e.reason
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for damaged files
        return i, None, f"{type(e).__name__}: {e}"


def _batches(
    source: ImageSource, backbone: Backbone, start: int, batch_size: int, workers: int
) -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]]]]:
    """Yield (indices, preprocessed batch, failures) in source order, decoding one batch ahead."""
    n = len(source)
    chunks = [list(range(a, min(a + batch_size, n))) for a in range(start, n, batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

        def submit(chunk: list[int]) -> list[Future]:
            return [pool.submit(_decode_one, source, backbone, i) for i in chunk]

        pending = submit(chunks[0])
        for k in range(len(chunks)):
            nxt = submit(chunks[k + 1]) if k + 1 < len(chunks) else None
            results = [f.result() for f in pending]
            ok = [(i, x) for i, x, err in results if x is not None]
            failed = [(i, err or "") for i, x, err in results if x is None]
            batch = np.stack([x for _, x in ok]) if ok else None
            yield [i for i, _ in ok], batch, failed
            pending = nxt if nxt is not None else []


def _select(out: ModelOutput, fields: Sequence[str]) -> dict[str, Any]:
    arrays: dict[str, Any] = {}
    for f in fields:
        v = getattr(out, f, None) if f in ModelOutput.__dataclass_fields__ else out.extra.get(f)
        if v is None:
            raise ValueError(f"backbone output has no field '{f}' (has {out.present() + sorted(out.extra)})")
        arrays[f] = np.asarray(v)
    return arrays


def _write_in_order(writer: CacheWriter, samples: Sequence[Any], idx: list[int], arrays: Mapping[str, np.ndarray],
                    failed: Mapping[int, str]) -> None:
    """Write a batch's decoded rows and its failures in source order (so shards stay contiguous):
    runs of decoded rows between failures go in as one block each."""
    events = sorted([(i, j) for j, i in enumerate(idx)] + [(i, -1) for i in failed])
    run: list[tuple[int, int]] = []

    def flush() -> None:
        if run:
            rows = [j for _, j in run]
            ids = np.array([i for i, _ in run])
            sl = slice(rows[0], rows[-1] + 1)  # decoded rows of a batch are consecutive
            writer.add(ids, np.array([samples[i].label for i in ids]), [samples[i].ident for i in ids],
                       {k: v[sl] for k, v in arrays.items()})
            run.clear()

    for i, j in events:
        if j < 0:
            flush()
            log.warning("skipping %s: %s", samples[i].ident, failed[i])
            writer.skip(i, samples[i].ident, failed[i])
        else:
            run.append((i, j))
    flush()


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
) -> CacheReader:
    """Extract ``fields`` of every sample of ``source`` with ``backbone`` into the feature cache.

    Returns a :class:`~tagood.cache.CacheReader`. Re-running with the same source, backbone and
    options returns the cached entry without work; an interrupted run resumes. ``max_batches``
    stops early without marking the entry complete (used to test resumption). ``batch_size`` is per
    device when ``backbone`` holds replicas on a device list (:mod:`tagood.backbones.multi`).
    """
    fields = list(fields or backbone.outputs)
    batch_size *= getattr(backbone, "n_devices", 1)  # replicas on a device list each get batch_size images
    if "tag_attention" in fields and "tag_ids" not in fields:
        fields.append("tag_ids")
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    key = cache_key(backbone.id, backbone.weights_hash, backbone.transform_id, source.fingerprint(), {"fields": sorted(fields), **(options or {})})
    d = entry_dir(root, split, key)
    if (d / MANIFEST).exists():
        m = Manifest.load(d / MANIFEST)
        if m.complete:
            log.info("cache hit: %s (%d samples, %d failed)", d, m.n_samples, len(m.failed))
            return CacheReader(d)
    n = len(source)
    if n == 0:
        from tagood.data.source import DataSourceError

        raise DataSourceError(f"source '{source.name}' is empty; nothing to extract")
    writer = CacheWriter.open(root, split, key, n_source=n, shard_size=shard_size, shard_mb=shard_mb,
                              meta={"source": source.name, "class_names": source.class_names})
    start = writer.next_index
    if start:
        log.info("resuming %s at sample %d of %d", d, start, n)
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    samples = source.samples
    t0 = time.perf_counter()
    done = 0
    with progress_bar(f"extract {split}", total=n, completed=start, enabled=progress) as advance:
        # the cache write (dtype conversion, shard commit) of batch k runs in a writer thread while
        # the model runs batch k+1; numpy and file I/O release the GIL
        with ThreadPoolExecutor(max_workers=1) as write_pool:
            pending: Future | None = None
            for k, (idx, batch, failed) in enumerate(_batches(source, backbone, start, batch_size, workers)):
                arrays = _select(backbone.forward(batch), fields) if batch is not None else {}
                if pending is not None:
                    pending.result()
                pending = write_pool.submit(_write_in_order, writer, samples, idx, arrays, dict(failed))
                done += len(idx) + len(failed)
                advance(len(idx) + len(failed))
                if max_batches is not None and k + 1 >= max_batches:
                    pending.result()
                    writer._commit()
                    return CacheReader(d)
            if pending is not None:
                pending.result()
    elapsed = time.perf_counter() - t0
    reader = writer.finish(meta={"seconds": elapsed, "images_per_s": done / elapsed if elapsed > 0 else None})
    if reader.failed:
        log.warning("%s: %d of %d images could not be decoded (listed in %s)", split, len(reader.failed), n, d / MANIFEST)
    return reader


class CachedImageStream:
    """Preprocessed images of the samples stored in a cache entry, in cache order (for ODIN).

    Only samples that decoded at extraction time are included, so it aligns with the cached
    features sample for sample.
    """

    def __init__(self, source: ImageSource, backbone: Backbone, indices: np.ndarray, workers: int | None = None) -> None:
        self.source = source
        self.backbone = backbone
        self.indices = np.asarray(indices, dtype=np.int64)
        self.workers = workers if workers is not None else min(8, os.cpu_count() or 1)

    def __len__(self) -> int:
        return len(self.indices)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for a in range(0, len(self.indices), batch_size):
                idx = self.indices[a : a + batch_size]
                imgs = list(pool.map(lambda i: self.backbone.preprocess(self.source.load(int(i))), idx))
                yield np.stack(imgs)
