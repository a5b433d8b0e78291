"""Collect a ragged :class:`~tagood.core.types.TokenSet` piece by piece, in memory or on disk.

Streamed training (ImageNet-1K train: 1.28M images x up to 145 tokens) cannot hold every image's
tokens in memory. TagOOD only trains on the *object* tokens of each image, so the decomposition
runs shard by shard and appends each shard's object tokens here; with a ``directory`` the values
go to a raw fp16 file and positions to an int16/int64 file, and :meth:`TokenSetSink.finish`
returns a TokenSet whose arrays are memory-maps of those files (random access for minibatches,
the OS page cache decides what stays in memory). Without a directory the pieces are concatenated
in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tagood.core.types import TokenSet

log = logging.getLogger(__name__)


class TokenSetSink:
    """Append TokenSets in sample order; ``finish()`` gives them as one TokenSet.

    ``directory``: where the on-disk arrays go (created; two files named after ``name``); ``None``
    keeps everything in memory. ``dtype``: stored value type on disk (fp16, the cache's).
    """

    def __init__(self, directory: str | Path | None = None, name: str = "tokens", dtype: np.dtype | type = np.float16,
                 max_position: int = 2**15 - 1) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.name = name
        self.dtype = np.dtype(dtype)
        self.pos_dtype = np.dtype(np.int16 if max_position < 2**15 else np.int64)
        self._parts: list[TokenSet] = []
        self._lengths: list[np.ndarray] = []
        self._dim: int | None = None
        self._n_values = 0
        self._fv = self._fp = None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fv = open(self.directory / f"{name}.values.bin", "wb")
            self._fp = open(self.directory / f"{name}.positions.bin", "wb")

    def append(self, part: TokenSet) -> None:
        if self._dim is None:
            self._dim = part.dim
        elif part.dim != self._dim:
            raise ValueError(f"TokenSetSink: token dim {part.dim} != {self._dim} of earlier parts")
        self._lengths.append(part.lengths)
        self._n_values += len(part.values)
        if self._fv is None:
            self._parts.append(part)
            return
        assert self._fp is not None
        self._fv.write(np.ascontiguousarray(part.values, dtype=self.dtype).tobytes())
        self._fp.write(np.ascontiguousarray(part.positions, dtype=self.pos_dtype).tobytes())

    def finish(self) -> TokenSet:
        if self._dim is None:
            raise ValueError("TokenSetSink: nothing was appended")
        lens = np.concatenate(self._lengths)
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        if self._fv is None:
            return TokenSet.concat(self._parts)
        assert self._fp is not None and self.directory is not None
        self._fv.close()
        self._fp.close()
        shape = (self._n_values, self._dim)
        if self._n_values == 0:
            return TokenSet(np.zeros(shape, self.dtype), offsets, np.zeros(0, np.int64))
        values = np.memmap(self.directory / f"{self.name}.values.bin", dtype=self.dtype, mode="r", shape=shape)
        positions = np.memmap(self.directory / f"{self.name}.positions.bin", dtype=self.pos_dtype, mode="r",
                              shape=(self._n_values,))
        log.info("token store %s: %d samples, %d tokens (%.1f GiB on disk)", self.directory, len(lens), self._n_values,
                 self._n_values * self._dim * self.dtype.itemsize / 2**30)
        return TokenSet(values, offsets, positions)
