"""The images of a cache entry's samples, for the methods that need the pixels (ODIN): :func:`entry_images`."""

from __future__ import annotations

import numpy as np

from tagood.cache import CacheReader
from tagood.core.images import ImageStream
from tagood.core.types import Backbone
from tagood.data.source import ImageSource


def entry_images(reader: CacheReader, source: ImageSource, backbone: Backbone, workers: int | None = None,
                 rows: np.ndarray | None = None) -> ImageStream:
    """The preprocessed images of the samples stored in a cache entry, in cache order.

    Only samples that decoded at extraction time are included, so the stream aligns with the cached features
    sample for sample; images are decoded again when read, one batch ahead of the consumer.

    Args:
        reader: the entry (extracted from ``source`` with ``backbone``).
        source: the entry's source.
        backbone: its ``preprocess`` gives the images the model sees.
        workers: decode threads (``None``: :func:`tagood.runtime.threads.decode_workers`).
        rows: positions in the entry (its features' rows) to take, in this order (default: every row).

    Returns:
        An :class:`~tagood.core.images.ImageStream` of ``len(reader)`` images (``len(rows)`` with ``rows``).
    """
    idx = np.asarray(reader.indices)
    return ImageStream(source=source, indices=idx if rows is None else idx[rows], preprocess=backbone.preprocess,
                       workers=workers)
