"""Random-resized crops of preprocessed images (Szegedy et al., CVPR 2015 "Inception" crop: area
fraction in ``scale``, aspect ratio log-uniform in ``ratio``), resized back to the input size with
bilinear interpolation. Works on already-normalised ``(B,3,H,W)`` arrays: cropping and bilinear
resizing commute with per-channel affine normalisation, so any dual encoder's preprocessing is kept.
Used by KR-NFT to build surrogate IND / OOD views of the few-shot images.

:func:`encode_view_crops` (KR-NFT's ``paper`` / ``official`` presets) cuts the crops from the *original* image,
as the public code's ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip()`` on the decoded picture
(``openood/preprocessors/randcrop_preprocessor.py:23-29``): the box is drawn on the original, resized to the
encoder's input side (S x S, bilinear), flipped with probability 1/2, then given to the encoder's own
preprocessing (for CLIP a no-op resize / centre crop of an S x S picture plus the normalisation: the script's
transform exactly; an encoder whose preprocessing centre-crops a share of the picture, as EfficientNet-Lite's
224/256, crops that share of the view too). The original is read through the training split's ImageStream
(``source.load`` + ``indices``, what ``dual_encoder.attach`` sets); a stream without a source gives only the
preprocessed pictures, and then the crops are cut from those (with the flip) and a warning says so.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)


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


def original_crop(image: Image.Image, size: int, rng: np.random.Generator, scale: tuple[float, float] = (0.08, 1.0),
                  flip: bool = True) -> Image.Image:
    """One random-resized crop of an original picture, resized to ``size`` x ``size`` (bilinear) and, with ``flip``,
    mirrored left-right with probability 1/2 (torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``).

    Args:
        image: the decoded picture; ``size``: the output side; ``rng``: the generator drawn from;
        scale: the crop's area fraction range; ``flip``: draw the mirror.
    Returns:
        The RGB view.
    """
    top, left, ch, cw = crop_box(image.height, image.width, rng, scale)
    view = image.convert("RGB").crop((left, top, left + cw, top + ch)).resize((size, size), Image.Resampling.BILINEAR)
    if flip and rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return view


def _sources(stream: Any) -> tuple[Any, Any, Callable[[Any], np.ndarray] | None]:
    src, ind = getattr(stream, "source", None), getattr(stream, "indices", None)
    prep = getattr(stream, "preprocess", None) or getattr(getattr(stream, "backbone", None), "preprocess", None)
    return src, ind, prep


def _preprocessed(stream: Any, positions: set[int]) -> dict[int, np.ndarray]:
    """The preprocessed pictures at ``positions`` of a stream without a source (read once, in order)."""
    out, pos = {}, 0
    for batch in stream.batches(64):
        for img in batch:
            if pos in positions:
                out[pos] = np.asarray(img, dtype=np.float32)
            pos += 1
    return out


def encode_view_crops(stream: Any, items: Sequence[tuple[int, tuple[int, ...]]], encode: Callable[[np.ndarray], np.ndarray],
                      n_crops: int, flip: bool = True, scale: tuple[float, float] = (0.08, 1.0),
                      batch_images: int = 4, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Embeddings of ``n_crops`` crops of the original picture per item (see the module docstring).

    Args:
        stream: the split's ImageStream; ``items``: ``(position in the stream, seed)`` pairs, one per crop set to cut
            (the seed alone fixes an item's crops, whatever else is cut).
        encode: ``(N, 3, H, W)`` -> ``(N, E)``; ``n_crops``: crops per item; ``flip``: mirror half of them;
        scale: the area fraction range; ``batch_images``: items encoded together; ``progress``: called with 1 per item.
    Returns:
        ``(len(items), n_crops, E)`` float32.
    """
    src, ind, prep = _sources(stream)
    has_original = src is not None and ind is not None and prep is not None
    pre = {} if has_original else _preprocessed(stream, {p for p, _ in items})
    if not has_original:
        log.warning("KR-NFT: the training images' originals are not reachable (the ImageStream has no source); "
                    "cutting the crops from the preprocessed pictures")
    out: list[np.ndarray] = []
    size: int | None = None
    for a in range(0, len(items), batch_images):
        views = []
        for p, seed in items[a : a + batch_images]:
            rng = np.random.default_rng(list(seed))
            if has_original:
                assert src is not None and ind is not None and prep is not None
                img = src.load(int(ind[p]))
                if size is None:
                    size = int(np.asarray(prep(img)).shape[-1])
                views.append(np.stack([np.asarray(prep(original_crop(img, size, rng, scale, flip)), dtype=np.float32)
                                       for _ in range(n_crops)]))
            else:
                crops = random_resized_crops(pre[p][None], n_crops, rng, scale)
                if flip:
                    mirror = rng.random(n_crops) < 0.5
                    crops[mirror] = crops[mirror][..., ::-1]
                views.append(crops)
            if progress is not None:
                progress(1)
        block = np.concatenate(views)
        out.append(np.asarray(encode(block), dtype=np.float32).reshape(len(views), n_crops, -1))
    if not out:
        raise ValueError("no images to crop")
    return np.concatenate(out)
