"""The tag ids each IND training image keeps, held as one flat array (:class:`KeptTags`).

The vocabulary is built from the tags the tag rule keeps on every IND training image. A Python list of one small
array per image costs about 170 bytes per image in object headers alone (over 200 MB for ImageNet-1K's 1.28M
training images, and as many objects again for each fold's copy); :class:`KeptTags` holds the same ids as a flat
``int64`` array and offsets, is a ``Sequence`` of per-image arrays for code that iterates, and gives the flat arrays
(:meth:`KeptTags.flat`) and row subsets (:func:`take`) without building per-image objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

__all__ = ["KeptTags", "flat", "take"]


class KeptTags(Sequence[np.ndarray]):
    """The kept tag ids of ``N`` images: image ``i``'s are ``values[offsets[i]:offsets[i + 1]]`` (int64, in the order
    the tag rule listed them).

    Args:
        values: every image's kept tag ids, concatenated.
        offsets: ``(N + 1,)`` start of each image's ids in ``values``, then ``len(values)``.
    """

    def __init__(self, values: np.ndarray, offsets: np.ndarray) -> None:
        self.values = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
        if len(self.offsets) == 0 or self.offsets[0] != 0 or self.offsets[-1] != len(self.values):
            raise ValueError(f"KeptTags: offsets must start at 0 and end at len(values)={len(self.values)}")

    @classmethod
    def from_chunks(cls, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> KeptTags:
        """The kept ids of consecutive chunks of images, each reduced to its kept ids as it comes: per chunk its
        ``(n, k)`` stored tag ids and the ``(n, k)`` boolean of the slots kept (image ``i`` keeps
        ``ids[i][keep[i]]``, in slot order).

        Args:
            chunks: ``(ids, keep)`` per chunk.
        Returns:
            The kept ids of all the chunks' images, in order.
        """
        vals: list[np.ndarray] = []
        lens: list[np.ndarray] = []
        for ids, keep in chunks:
            k = np.asarray(keep, dtype=bool)
            vals.append(np.asarray(ids)[k].astype(np.int64, copy=False))
            lens.append(k.sum(axis=1).astype(np.int64))
        lengths = np.concatenate(lens) if lens else np.zeros(0, np.int64)
        return cls(np.concatenate(vals) if vals else np.zeros(0, np.int64), np.concatenate([[0], np.cumsum(lengths)]))

    @property
    def lengths(self) -> np.ndarray:
        """``(N,)`` the number of ids each image keeps."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[np.ndarray]: ...

    def __getitem__(self, i: int | slice) -> np.ndarray | Sequence[np.ndarray]:
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"KeptTags index {i} out of range for {n} images")
        i %= n
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True):
            yield self.values[a:b]

    def take(self, idx: np.ndarray) -> KeptTags:
        """The images ``idx`` (in that order), without a per-image object.

        Args:
            idx: image indices.
        Returns:
            Their kept ids.
        """
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        lens = self.lengths[idx]
        starts = np.concatenate([[0], np.cumsum(lens)])
        # position j of the result holds values[offsets[idx[r]] + (j - starts[r])] for the row r it falls in
        rows = np.repeat(np.arange(len(idx)), lens)
        src = self.offsets[idx][rows] + (np.arange(int(starts[-1])) - starts[:-1][rows])
        return KeptTags(self.values[src], starts)


def flat(kept: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(lengths (N,), ids concatenated)`` of per-image kept ids, both int64: read off a :class:`KeptTags`,
    concatenated from any other sequence.

    Args:
        kept: the kept ids of each image.
    Returns:
        The number of ids per image and all ids in image order.
    """
    if isinstance(kept, KeptTags):
        return kept.lengths, kept.values
    lens = np.fromiter((len(k) for k in kept), dtype=np.int64, count=len(kept))
    ids = np.concatenate([np.asarray(k, dtype=np.int64).reshape(-1) for k in kept]) if lens.sum() else np.zeros(0, np.int64)
    return lens, ids


def take(kept: Sequence[np.ndarray], idx: np.ndarray) -> Sequence[np.ndarray]:
    """The images ``idx`` of ``kept``: a :class:`KeptTags` for a :class:`KeptTags`, a list otherwise.

    Args:
        kept: the kept ids of each image.
        idx: image indices.
    Returns:
        Their kept ids, in the order of ``idx``.
    """
    if isinstance(kept, KeptTags):
        return kept.take(idx)
    return [kept[int(i)] for i in idx]
