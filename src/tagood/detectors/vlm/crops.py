"""Random-resized crops of preprocessed images (Szegedy et al., CVPR 2015 "Inception" crop: area
fraction in ``scale``, aspect ratio log-uniform in ``ratio``), resized back to the input size with
bilinear interpolation. Works on already-normalised ``(B,3,H,W)`` arrays: cropping and bilinear
resizing commute with per-channel affine normalisation, so any dual encoder's preprocessing is kept.
Used by KR-NFT to build surrogate IND / OOD views of the few-shot images.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def crop_box(h: int, w: int, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0),
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """One random-resized crop box (10 tries, then the centre crop).

    Args:
        h, w: the image's height and width; ``rng``: the generator drawn from.
        scale: the range of the crop's area fraction; ``ratio``: the range of its aspect ratio (log-uniform).
    Returns:
        ``(top, left, height, width)``.
    """
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    s = min(h, w)
    return (h - s) // 2, (w - s) // 2, s, s


def random_resized_crops(images: np.ndarray, n_crops: int, rng: np.random.Generator,
                         scale: tuple[float, float] = (0.08, 1.0)) -> np.ndarray:
    """``n_crops`` random-resized crops of each image, resized back to ``(H, W)`` (bilinear).

    Args:
        images: ``(B, 3, H, W)`` preprocessed images; ``n_crops``: crops per image; ``rng``: the generator drawn from;
        scale: the range of the crops' area fraction.
    Returns:
        ``(B * n_crops, 3, H, W)`` float32, the crops of image ``i`` at rows ``i*n_crops .. (i+1)*n_crops - 1``.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    _, _, h, w = x.shape
    out = torch.empty((len(x) * n_crops, 3, h, w), dtype=torch.float32)
    k = 0
    for i in range(len(x)):
        for _ in range(n_crops):
            top, left, ch, cw = crop_box(h, w, rng, scale)
            out[k] = F.interpolate(x[i : i + 1, :, top : top + ch, left : left + cw], size=(h, w), mode="bilinear",
                                   align_corners=False)[0]
            k += 1
    return out.numpy()


def subset_stream(stream: Any, idx: np.ndarray) -> Iterator[np.ndarray]:
    """Yield the images ``idx`` (sorted) of an ImageStream one at a time, decoding only those when the
    stream knows its source (``source`` + ``indices`` + ``preprocess`` or ``backbone``)."""
    idx = np.sort(np.asarray(idx, dtype=np.int64))
    src, ind = getattr(stream, "source", None), getattr(stream, "indices", None)
    prep = getattr(stream, "preprocess", None) or getattr(getattr(stream, "backbone", None), "preprocess", None)
    if src is not None and ind is not None and prep is not None:
        for i in idx:
            yield np.asarray(prep(src.load(int(ind[i]))), dtype=np.float32)
        return
    want = set(idx.tolist())
    pos = 0
    for batch in stream.batches(64):
        for img in batch:
            if pos in want:
                yield np.asarray(img, dtype=np.float32)
            pos += 1


def encode_crops(images: Iterator[np.ndarray], encode: Callable[[np.ndarray], np.ndarray], n_crops: int,
                 seed: int = 0, scale: tuple[float, float] = (0.08, 1.0), batch_images: int = 4) -> np.ndarray:
    """Embeddings ``(n_images, n_crops, E)`` of ``n_crops`` random-resized crops of each image.

    The crops of the next ``batch_images`` images are cut (and those images read) in a background thread
    while ``encode`` runs on the current ones; one thread draws all crops in order, so the result does not
    depend on the overlap.

    Args:
        images: the images, ``(3, H, W)`` each, in order; ``encode``: ``(N, 3, H, W)`` -> ``(N, E)`` embeddings.
        n_crops: crops per image; ``seed``: the crops' seed; ``scale``: their area fraction range;
        batch_images: images cropped (and encoded) together.
    Returns:
        ``(n_images, n_crops, E)`` float32 embeddings.
    """
    rng = np.random.default_rng(seed)

    def next_crops() -> tuple[int, np.ndarray] | None:
        buf = list(itertools.islice(images, batch_images))
        return (len(buf), random_resized_crops(np.stack(buf), n_crops, rng, scale)) if buf else None

    out: list[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagood-crops") as pool:
        ahead = pool.submit(next_crops)
        while (item := ahead.result()) is not None:
            ahead = pool.submit(next_crops)
            n, crops = item
            out.append(np.asarray(encode(crops), dtype=np.float32).reshape(n, n_crops, -1))
    if not out:
        raise ValueError("no images to crop")
    return np.concatenate(out)
