"""The image stream: preprocessed images of a split, in sample order, for the methods that need the pixels.

ODIN perturbs the input images, KR-NFT cuts random crops of them; every other method reads cached features.
:class:`ImageStream` is the one type that carries the pixels in a :class:`~tagood.core.featureset.FeatureSet`
(``FeatureSet.images``): either images held in memory, or images decoded on demand from an image source
(a benchmark's cache entry aligned with its source, a dual encoder's training split).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from tagood.runtime.threads import decode_workers

T = TypeVar("T")


class ImageLoader(Protocol):
    """What an :class:`ImageStream` decodes from: ``load(i)`` gives sample ``i``'s image (a PIL RGB image for
    a :class:`tagood.data.source.ImageSource`)."""

    def load(self, i: int) -> Any: ...


def decode_ahead(fn: Callable[[int], T], chunks: Sequence[Sequence[int] | NDArray[np.int64]],
                 workers: int) -> Iterator[list[T]]:
    """``[fn(i) for i in chunk]`` for each chunk in order, computed by a thread pool one chunk ahead of the consumer.

    The next chunk is submitted before the current one is handed out, so decoding overlaps the consumer's work
    (the model's forward pass). ``fn`` must be safe to run in threads (PIL and numpy code, which release the GIL).

    Args:
        fn: the work for one index (decode and preprocess sample ``i``).
        chunks: the indices, chunk by chunk.
        workers: threads of the pool (at least 1 is used).

    Returns:
        An iterator of each chunk's results, in order.
    """
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ahead: list[Future[T]] = [pool.submit(fn, int(i)) for i in chunks[0]]
        for k in range(len(chunks)):
            current = ahead
            ahead = [pool.submit(fn, int(i)) for i in chunks[k + 1]] if k + 1 < len(chunks) else []
            yield [f.result() for f in current]


class ImageStream:
    """Preprocessed images of a split, in sample order: ``(b, 3, H, W)`` float32 batches.

    Two ways to build one, one type:

    * ``ImageStream(images)``: images held in memory, already preprocessed, ``(N, 3, H, W)``.
    * ``ImageStream(source=..., indices=..., preprocess=...)``: row ``i`` is
      ``preprocess(source.load(indices[i]))``, decoded when it is read. A benchmark gives the samples stored
      in a cache entry (``CacheReader.indices``: samples that failed to decode at extraction are absent, so the
      stream aligns with the cached features row for row) and the backbone's ``preprocess``
      (:func:`tagood.extract.entry_images`); a dual encoder gives its own preprocessing.

    Args:
        images: preprocessed images ``(N, 3, H, W)`` (converted to float32), or ``None`` with ``source``.
        source: what to decode from (an :class:`~tagood.data.source.ImageSource`), or ``None`` with ``images``.
        indices: the source index of each row (with ``source``).
        preprocess: image -> float32 ``(3, H, W)`` (with ``source``).
        workers: decode threads working one batch ahead of the consumer (``None``: the process's decode pool
            size, :func:`tagood.runtime.threads.decode_workers`); ``0`` decodes in the consumer's thread (for a
            ``preprocess`` that runs torch code, which the decode pool never does).

    Raises:
        ValueError: neither or both of ``images`` and ``source`` are given, or ``source`` without
            ``indices`` and ``preprocess``.
    """

    def __init__(self, images: np.ndarray | None = None, *, source: ImageLoader | None = None,
                 indices: Sequence[int] | np.ndarray | None = None,
                 preprocess: Callable[[Any], np.ndarray] | None = None, workers: int | None = None) -> None:
        if (images is None) == (source is None):
            raise ValueError("ImageStream: pass either images (N, 3, H, W) or source= with indices= and preprocess=")
        self.images: np.ndarray | None = None
        self.source: ImageLoader | None = source
        self.indices: np.ndarray | None = None
        self.preprocess: Callable[[Any], np.ndarray] | None = preprocess
        self.workers = 0
        if images is not None:
            self.images = np.asarray(images, dtype=np.float32)
            return
        if indices is None or preprocess is None:
            raise ValueError("ImageStream(source=...) also needs indices= (the source index of each row) and "
                             "preprocess= (image -> float32 (3, H, W))")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.workers = workers if workers is not None else decode_workers()

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        assert self.indices is not None
        return len(self.indices)

    def part(self, start: int, stop: int) -> ImageStream:
        """The stream of rows ``start:stop`` (a rank's share of a split, :func:`tagood.runtime.distributed.score`).

        Args:
            start: first row.
            stop: one past the last row.

        Returns:
            A stream of the same kind (in memory: a view of the same array).
        """
        if self.images is not None:
            return ImageStream(self.images[start:stop])
        assert self.indices is not None
        return ImageStream(source=self.source, indices=self.indices[start:stop], preprocess=self.preprocess,
                           workers=self.workers)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """The images in order, ``batch_size`` at a time.

        Decoded from a source, a batch is decoded while the consumer works on the previous one (ODIN's
        gradient pass does not keep every core busy, so decoding meanwhile hides most of its cost), unless
        ``workers`` is 0.

        Args:
            batch_size: images per batch (the last one may be smaller).

        Returns:
            An iterator of float32 arrays ``(b, 3, H, W)``.
        """
        if self.images is not None:
            for a in range(0, len(self.images), int(batch_size)):
                yield self.images[a : a + batch_size]
            return
        src, prep, idx = self.source, self.preprocess, self.indices
        assert src is not None and prep is not None and idx is not None
        if self.workers == 0:
            for a in range(0, len(idx), batch_size):
                yield np.stack([prep(src.load(int(i))) for i in idx[a : a + batch_size]])
            return
        chunks = [idx[a : a + batch_size] for a in range(0, len(idx), batch_size)]
        for imgs in decode_ahead(lambda i: prep(src.load(i)), chunks, self.workers):
            yield np.stack(imgs)
