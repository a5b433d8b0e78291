"""Shard files: safetensors written atomically with their SHA-256, and read back memory-mapped.

The safetensors header is parsed here and each tensor's data region mapped with ``numpy.memmap``
(no copy); a truncated file or a header that does not match its data is a :class:`CacheError`
naming the file.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save as _st_save

from tagood.errors import CacheError
from tagood.runtime.fileio import atomic_write_bytes, atomic_write_json

#: safetensors dtype names -> numpy dtypes
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


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> tuple[int, str]:
    """Write ``tensors`` to ``path`` as one safetensors file, atomically (temp file + rename).

    Args:
        path: the shard file.
        tensors: name -> array (made contiguous).

    Returns:
        ``(bytes, SHA-256 hex digest)`` of the file written.
    """
    data = _st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    atomic_write_bytes(path, data)
    return len(data), hashlib.sha256(data).hexdigest()


def write_json_hashed(path: Path, obj: Any) -> str:
    """Write ``obj`` to ``path`` as compact JSON, atomically (a shard's sidecar).

    Args:
        path: the JSON file.
        obj: a JSON-able object.

    Returns:
        The SHA-256 hex digest of the bytes written.
    """
    return hashlib.sha256(atomic_write_json(path, obj, indent=None)).hexdigest()


def mmap_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file as a read-only numpy array (no copy).

    Args:
        path: the safetensors file.

    Returns:
        Tensor name -> read-only array (an empty tensor is a zero-size array, not a mapping).

    Raises:
        CacheError: the file is truncated, or its header is damaged or does not match its size.
    """
    path = Path(path)
    fix = "run `tagood cache verify --repair` or delete the cache entry and re-extract"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise CacheError(f"{path} is truncated or damaged (header length {n} > file size {size}); {fix}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
        raise CacheError(f"cannot read safetensors header of {path}: {e}; {fix}") from e
    header.pop("__metadata__", None)
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            start, end = (int(x) for x in info["data_offsets"])
            shape = tuple(int(x) for x in info["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise CacheError(f"{path}: damaged header entry for tensor {name!r} ({e!r}); {fix}") from e
        if base + end > size:
            raise CacheError(f"{path} is truncated (tensor {name}); {fix}")
        if not 0 <= start <= end or end - start != int(np.prod(shape)) * dtype.itemsize or min(shape, default=1) < 0:
            raise CacheError(f"{path}: damaged header (tensor {name} offsets do not match its shape); {fix}")
        count = int(np.prod(shape)) if shape else 1
        if count == 0:
            out[name] = np.zeros(shape, dtype=dtype)
        else:
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + start, shape=shape)
    return out

