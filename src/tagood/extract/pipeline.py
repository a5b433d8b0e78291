"""The extraction of one range of a source: decode ahead, forward, write in source order.

Decoding and preprocessing run in worker processes (:mod:`tagood.extract.decode_pool`; not bound by one interpreter
lock) two batches ahead of the model forward, which gets each batch in shared memory without a copy, so the model is
rarely idle; ``TAGOOD_DECODE=threads`` decodes in a thread pool one batch ahead instead
(:func:`tagood.runtime.threads.decode_kind`). The cache write of batch k overlaps batch k+1's forward. A sample that
cannot be decoded is skipped, recorded in the cache manifest (``failed``) and reported; it never aborts a run,
but a source whose every image fails, or a labelled source that loses every image of a class, is an error
(:func:`check_result`). Each source file's ``[size, mtime_ns]`` is taken before it is decoded and stored with
its shard. Used by the local (:mod:`tagood.extract.local`) and the torchrun (:mod:`tagood.extract.torchrun`)
extraction alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from typing import Any

import numpy as np

from tagood.cache import MANIFEST, CacheReader, CacheWriter
from tagood.core.images import decode_ahead
from tagood.core.types import Backbone, ModelOutput
from tagood.data.source import DataSourceError, ImageSource
from tagood.extract.decode_pool import Batch, as_batch, decode_one, fork_available, process_batches
from tagood.runtime.threads import decode_kind

log = logging.getLogger(__name__)


def decode_batches(
    source: ImageSource, backbone: Backbone, start: int, batch_size: int, workers: int, stop: int | None = None,
    kind: str | None = None,
) -> Generator[Batch, None, None]:
    """Decode and preprocess samples ``start:stop`` in batches, ahead of the consumer.

    In ``workers`` forked processes (:func:`tagood.extract.decode_pool.process_batches`: two batches ahead, each
    batch a view of shared memory valid until the next is asked for) or in a pool of ``workers`` threads (one batch
    ahead), as ``kind`` says. A range of a single batch is decoded by threads either way (nothing to overlap, no
    processes to start), as is every range where processes cannot be forked. The batches are the same either way.

    Args:
        source: the images.
        backbone: its ``preprocess`` is applied to each image.
        start: first source index.
        batch_size: samples per batch.
        workers: decode processes or threads.
        stop: one past the last source index (``None``: the whole source).
        kind: ``"processes"`` or ``"threads"`` (``None``: :func:`tagood.runtime.threads.decode_kind`).

    Returns:
        An iterator, in source order, of ``(decoded indices, their batch (b, 3, H, W) or None when every sample
        of the batch failed, failures [(index, reason)], {index: file stat})``.
    """
    n = len(source) if stop is None else stop
    chunks = [list(range(a, min(a + batch_size, n))) for a in range(start, n, batch_size)]
    kind = kind or decode_kind()
    if kind == "processes" and len(chunks) > 1 and fork_available():
        yield from process_batches(source, backbone.preprocess, chunks, workers)
        return
    for results in decode_ahead(lambda i: decode_one(source, backbone.preprocess, i), chunks, workers):
        yield as_batch(results)


def _select(out: ModelOutput, fields: Sequence[str], batch: np.ndarray | None = None) -> dict[str, Any]:
    """The arrays of ``fields`` in a backbone's output (its dataclass fields or ``extra``) of ``batch``."""
    arrays: dict[str, Any] = {}
    for f in fields:
        v = getattr(out, f, None) if f in ModelOutput.__dataclass_fields__ else out.extra.get(f)
        if v is None:
            raise ValueError(f"backbone output has no field '{f}' (has {out.present() + sorted(out.extra)})")
        a = np.asarray(v)
        # the batch may be a view of the decode workers' shared memory, refilled once the next batch is asked for:
        # an output that is a view of it (a backbone returning its input) is copied before the write runs later
        arrays[f] = a.copy() if batch is not None and np.may_share_memory(a, batch) else a
    return arrays


def _write_in_order(writer: CacheWriter, samples: Sequence[Any], idx: list[int], arrays: Mapping[str, np.ndarray],
                    failed: Mapping[int, str], stats: Mapping[int, list[int] | None] | None = None) -> None:
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
                       {k: v[sl] for k, v in arrays.items()},
                       stats=[stats.get(int(i)) for i in ids] if stats is not None else None)
            run.clear()

    for i, j in events:
        if j < 0:
            flush()
            log.warning("skipping %s: %s", samples[i].ident, failed[i])
            writer.skip(i, samples[i].ident, failed[i], stat=stats.get(i) if stats is not None else True)
        else:
            run.append((i, j))
    flush()


def check_result(reader: CacheReader, source: ImageSource) -> CacheReader:
    """Check a finished extraction: not every image failed, no labelled class lost all its images.

    Args:
        reader: the finished entry.
        source: its source.

    Returns:
        ``reader``.

    Raises:
        DataSourceError: every image failed, or every image of a class did (naming some of them).
    """
    n = len(source)
    failed = reader.failed
    if n and len(reader) == 0:
        first = "; ".join(f"{f['ident']}: {f['reason']}" for f in failed[:3])
        raise DataSourceError(f"none of the {n} images of '{source.name}' could be decoded ({first}"
                              f"{' ...' if len(failed) > 3 else ''}); check the files and their format")
    if failed and source.class_names:
        have = set(np.unique(reader.labels).tolist())
        lost = sorted({s.label for s in source.samples if s.label >= 0} - have)
        if lost:
            names = [source.class_names[k] if k < len(source.class_names) else str(k) for k in lost]
            raise DataSourceError(f"'{source.name}': every image of class {', '.join(map(repr, names[:5]))} failed to "
                                  f"decode (listed in {reader.dir / MANIFEST}); fix or remove that class folder")
    return reader


def extract_range(writer: CacheWriter, source: ImageSource, backbone: Backbone, fields: Sequence[str], start: int,
                  stop: int | None, batch_size: int, workers: int, advance: Callable[[int], Any] | None = None,
                  max_batches: int | None = None) -> int:
    """Decode + forward + write samples ``start:stop``; the cache write of batch k overlaps batch k+1's forward.

    Args:
        writer: the entry (or part) written to, positioned at ``start``.
        source: the images.
        backbone: the model.
        fields: the backbone outputs stored.
        start: first source index.
        stop: one past the last source index (``None``: the whole source).
        batch_size: samples per forward pass.
        workers: decode processes (or threads, :func:`tagood.runtime.threads.decode_kind`).
        advance: called with the number of samples done after each batch (a progress bar).
        max_batches: stop after this many batches (used to test resumption).

    Returns:
        The number of samples done (stored or failed).
    """
    samples = source.samples
    done = 0
    with ThreadPoolExecutor(max_workers=1) as write_pool:  # numpy and file I/O release the GIL
        pending: Future[None] | None = None
        # closed on a break or an error too: the decode workers stop with it
        with closing(decode_batches(source, backbone, start, batch_size, workers, stop)) as batches:
            for k, (idx, batch, failed, stats) in enumerate(batches):
                arrays = _select(backbone.forward(batch), fields, batch) if batch is not None else {}
                if pending is not None:
                    pending.result()
                pending = write_pool.submit(_write_in_order, writer, samples, idx, arrays, dict(failed), stats)
                done += len(idx) + len(failed)
                if advance is not None:
                    advance(len(idx) + len(failed))
                if max_batches is not None and k + 1 >= max_batches:
                    break
        if pending is not None:
            pending.result()
    return done

