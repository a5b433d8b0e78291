"""Object crops: each image of a source cut down to one box, as a new image source (``objects=crop``, issue 24).

TagOOD (Li et al., ACM MM 2024) decomposes a frozen image feature into object tokens; this module takes the other
route, *object-centric re-encoding* (beyond the paper): the box of an image's object region (the kept tokens of a
tag decomposition, or the true object mask of a source that knows it) is padded, made square, and cut out of the
source image, and the crop is then encoded by the backbone at its own input resolution like any image. The crops
are an :class:`tagood.data.source.ImageSource` (:class:`CropSource`), so they are extracted and cached like any
split's features (the cache key holds the boxes), and any detector -- a classic image-level one on an IND head
fitted on training crops, or an object-level one -- scores them unchanged.

Boxes are ``(left, top, right, bottom)`` in the source image's pixels (float, right/bottom exclusive).
:func:`token_box` maps a kept-token mask onto pixels through the backbone's ``token_geometry`` (the grid cells
of its centre crop); :func:`mask_box` is the tight box of a pixel mask; :func:`square_box` pads a box, makes it
square and compensates the backbone's own centre crop (resize then crop), so that what the backbone keeps of
the crop is the padded square.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from tagood.data.source import DataSourceError, ImageSource, Sample

log = logging.getLogger(__name__)

__all__ = ["PAD", "CropSource", "mask_box", "square_box", "token_box"]

Box = tuple[float, float, float, float]
#: padding added on each side of an object box, as a fraction of its longer side
PAD = 0.1


def token_box(mask: np.ndarray, geometry: tuple[Box, tuple[int, int], int]) -> Box | None:
    """The pixel box of the kept spatial tokens of one image (the union of their grid cells).

    Args:
        mask: ``(T,)`` bool, the kept tokens (prefix tokens first, as the backbone orders them).
        geometry: ``backbone.token_geometry(width, height)`` of the image: ``(crop box, (rows, cols), n_prefix)``.
    Returns:
        ``(left, top, right, bottom)`` in source pixels, or None when no spatial token is kept.
    """
    (left, top, right, bottom), (rows, cols), n_prefix = geometry
    cells = np.asarray(mask, dtype=bool)[n_prefix:].reshape(rows, cols)
    if not cells.any():
        return None
    rr, cc = np.nonzero(cells)
    ch, cw = (bottom - top) / rows, (right - left) / cols
    return (left + cc.min() * cw, top + rr.min() * ch, left + (cc.max() + 1) * cw, top + (rr.max() + 1) * ch)


def mask_box(mask: np.ndarray) -> Box | None:
    """The tight pixel box of a bool ``(H, W)`` mask, or None when it is empty."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return None
    ys, xs = np.nonzero(m)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def square_box(box: Box, width: int, height: int, pad: float = PAD, keep: float = 1.0) -> tuple[int, int, int, int]:
    """A square integer crop box around ``box``: padded by ``pad`` of its longer side on each side, made square
    (centred), enlarged by ``1 / keep`` (the fraction of a square image the backbone's centre crop keeps, so that the
    padded square is what it sees), shifted inside the image and, when larger than it, shrunk to its shorter side.

    Args:
        box: ``(left, top, right, bottom)`` in pixels.
        width: the image's width.
        height: the image's height.
        pad: padding per side, as a fraction of the box's longer side.
        keep: the fraction of the crop's side the backbone keeps (EfficientNet-Lite0: 224 / 256).
    Returns:
        ``(left, top, right, bottom)`` integers, a square inside the image.
    """
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * pad) / keep
    side = max(2.0, min(side, float(min(width, height))))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    s = int(round(side))
    left = int(round(min(max(cx - side / 2.0, 0.0), width - s)))
    top = int(round(min(max(cy - side / 2.0, 0.0), height - s)))
    return left, top, left + s, top + s


class CropSource(ImageSource):
    """The images of ``source`` each cut to its box and resized to ``size x size`` (bilinear).

    Labels and sample order are the source's. ``boxes[i]`` is the integer crop box of image ``i`` in its pixels
    (e.g. from :func:`square_box`); None keeps the whole image. The cache key (:meth:`content_id`) holds the
    source's fingerprint and every box, so the features of one set of crops are extracted once.

    Args:
        source: the images to crop.
        boxes: one box (or None) per image of ``source``.
        size: the side of each crop image, in pixels.
        name: the source's name (reports, cache keys).
        what: a short description of where the boxes come from (kept in the cache key and the sample ids).
    Raises:
        tagood.data.source.DataSourceError: not one box per image.
    """

    def __init__(self, source: ImageSource, boxes: Sequence[tuple[int, int, int, int] | None], size: int = 256,
                 name: str | None = None, what: str = "crop") -> None:
        if len(boxes) != len(source):
            raise DataSourceError(f"{name or source.name}: {len(boxes)} crop boxes for {len(source)} images; give one per image")
        self.source = source
        self.boxes: list[tuple[int, int, int, int] | None] = [
            None if b is None else (int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in boxes]
        self.size = int(size)
        self.what = what
        self.name = name or f"{source.name}-{what}"
        self.class_names = source.class_names
        self._samples = [Sample(f"{s.ident}#{what}", s.label) for s in source.samples]

    @property
    def samples(self) -> list[Sample]:
        return self._samples

    def _load(self, i: int) -> Image.Image:
        img = self.source.load(i)
        box = self.boxes[i]
        if box is not None:
            img = img.crop(box)
        return img.resize((self.size, self.size), Image.Resampling.BILINEAR)

    def content_id(self) -> str:
        arr = np.array([(-1, -1, -1, -1) if b is None else b for b in self.boxes], dtype=np.int64)
        parts = [self.source.fingerprint(), self.what, str(self.size), hashlib.sha256(arr.tobytes()).hexdigest()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def crop_keep(backbone: Any, size: int = 256) -> float:
    """The fraction of a ``size x size`` image's side that ``backbone`` keeps (its centre crop; 1.0 without one)."""
    geometry = getattr(backbone, "token_geometry", None)
    if geometry is None:
        return 1.0
    (left, _top, right, _bottom), _grid, _n = geometry(size, size)
    return float(min(1.0, (right - left) / size))
