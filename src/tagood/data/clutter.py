"""Cluttered scenes: one object among background clutter (the TagOOD paper's motivating case, Fig. 1).

TagOOD (Li et al., "TagOOD: A Novel Approach to Out-of-Distribution Detection via Vision-Language
Representations and Class Center Learning", ACM MM 2024) argues that an image-level feature mixes the
IND object with irrelevant background, while tag attention can cut the object out. These sources
build that case from offline data: each sample is a ``canvas x canvas`` RGB image holding one object
image (a Fashion-MNIST item) at a seeded random place and scale, and several MNIST digits as
background clutter at seeded random places and scales. Clutter is placed outside the object's box,
so it never hides the object.

Background: black. Fashion-MNIST and MNIST are light ink on a black ground, so pasting a greyscale
item as white ink with its intensity as alpha (``pixel = a * 255 + (1 - a) * below``, ``a =
intensity / 255``) on black reproduces the item exactly inside its box (pixel = intensity), with no
seam; the object box is then recoverable from the pixels, which the tests use.
(A mid-grey ground would draw a visible dark-to-grey halo around each item's soft edge.)
``colour=True`` tints each greyscale item with a seeded random hue (same alpha), for backbones whose
tags respond to colour. RGB items (e.g. photos from a folder source) are pasted opaque, or with
their own alpha. ``objects=None`` gives clutter-only canvases.
"""

from __future__ import annotations

import colorsys
import hashlib
import logging
from typing import Any

import numpy as np
from PIL import Image

from tagood.data.decode import to_rgb
from tagood.data.source import DataSourceError, ImageSource, Sample

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
_GREY_MODES = ("1", "L", "I;16", "I;16B", "I;16L", "I", "F")
#: Bumped whenever the rendering of a canvas changes, so cached features of old canvases are not reused.
_RENDER_VERSION = 2


def _boxes_overlap(a: Box, b: Box) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


class ClutterSource(ImageSource):
    """``n`` cluttered canvases; sample ``i`` uses object ``i % len(objects)`` (label = its label, or -1).

    Rendering is lazy (in ``_load``) and deterministic per ``(seed, i)``: :meth:`layout` gives the
    object box ``(x0, y0, x1, y1)`` and the ``(clutter index, box)`` list of sample ``i``.
    ``object_scale`` / ``clutter_scale`` are side lengths as fractions of ``canvas``; ``n_clutter``
    is an inclusive range. A clutter item that finds no free place in 50 seeded tries is left out.
    """

    def __init__(self, objects: ImageSource | None, clutter: ImageSource, n: int, seed: int = 0, canvas: int = 224,
                 n_clutter: tuple[int, int] = (3, 6), object_scale: tuple[float, float] = (0.45, 0.7),
                 clutter_scale: tuple[float, float] = (0.12, 0.25), name: str = "clutter", colour: bool = False) -> None:
        if n < 1:
            raise DataSourceError(f"{name}: n must be >= 1, got {n}")
        if len(clutter) == 0 or (objects is not None and len(objects) == 0):
            raise DataSourceError(f"{name}: object and clutter sources must not be empty")
        if not 0 <= n_clutter[0] <= n_clutter[1]:
            raise ValueError(f"n_clutter must be (lo, hi) with 0 <= lo <= hi, got {n_clutter}")
        for nm, (lo, hi) in (("object_scale", object_scale), ("clutter_scale", clutter_scale)):
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"{nm} must be (lo, hi) with 0 < lo <= hi <= 1, got {(lo, hi)}")
        self.objects = objects
        self.clutter = clutter
        self.n = int(n)
        self.seed = seed
        self.canvas = canvas
        self.n_clutter = n_clutter
        self.object_scale = object_scale
        self.clutter_scale = clutter_scale
        self.colour = colour
        self.name = name
        self.class_names = objects.class_names if objects is not None else None
        if objects is not None:
            os_ = objects.samples
            self._samples = [Sample(f"{name}:{i}:{os_[i % len(os_)].ident}", os_[i % len(os_)].label) for i in range(self.n)]
        else:
            self._samples = [Sample(f"{name}:{i}", -1) for i in range(self.n)]

    @property
    def samples(self) -> list[Sample]:
        return self._samples

    def layout(self, i: int) -> dict[str, Any]:
        """The seeded layout of sample ``i``: ``{"object": box or None, "clutter": [(index, box), ...]}``."""
        rng = np.random.default_rng([self.seed, i, 7])
        c = self.canvas
        obj_box = None
        if self.objects is not None:
            s = max(1, int(rng.uniform(*self.object_scale) * c))
            x, y = rng.integers(0, c - s + 1, size=2)
            obj_box = (int(x), int(y), int(x + s), int(y + s))
        k = int(rng.integers(self.n_clutter[0], self.n_clutter[1] + 1))
        items = []
        for _ in range(k):
            s = max(1, int(rng.uniform(*self.clutter_scale) * c))
            j = int(rng.integers(len(self.clutter)))
            for _try in range(50):
                x, y = (int(v) for v in rng.integers(0, c - s + 1, size=2))
                box = (x, y, x + s, y + s)
                if obj_box is None or not _boxes_overlap(box, obj_box):
                    items.append((j, box))
                    break
            else:
                log.debug("%s: sample %d: no free place for a clutter item of side %d", self.name, i, s)
        return {"object": obj_box, "clutter": items}

    def _tints(self, i: int, k: int) -> list[tuple[float, float, float]]:
        """``k`` seeded tints for sample ``i`` (white when ``colour`` is off); a separate stream from the layout."""
        if not self.colour:
            return [(1.0, 1.0, 1.0)] * k
        rng = np.random.default_rng([self.seed, i, 11])
        return [colorsys.hsv_to_rgb(float(h), 0.75, 1.0) for h in rng.uniform(0.0, 1.0, size=k)]

    @staticmethod
    def _paste(canvas: Image.Image, src: Image.Image, box: Box, tint: tuple[float, float, float]) -> None:
        size = (box[2] - box[0], box[3] - box[1])
        if src.mode in _GREY_MODES:  # ink on black: intensity is the alpha
            g = to_rgb(src).convert("L").resize(size, Image.Resampling.BILINEAR)
            ink = Image.new("RGB", size, tuple(round(255 * t) for t in tint))
            canvas.paste(ink, box[:2], mask=g)
        elif src.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (src.mode == "P" and "transparency" in src.info):
            rgba = src.convert("RGBA").resize(size, Image.Resampling.BILINEAR)
            canvas.paste(rgba.convert("RGB"), box[:2], mask=rgba.getchannel("A"))
        else:
            canvas.paste(to_rgb(src).resize(size, Image.Resampling.BILINEAR), box[:2])

    def _load(self, i: int) -> Image.Image:
        lay = self.layout(i)
        img = Image.new("RGB", (self.canvas, self.canvas), (0, 0, 0))
        tints = self._tints(i, len(lay["clutter"]) + 1)
        for (j, box), tint in zip(lay["clutter"], tints[1:], strict=True):
            self._paste(img, self.clutter._load(j), box, tint)
        if lay["object"] is not None and self.objects is not None:
            self._paste(img, self.objects._load(i % len(self.objects)), lay["object"], tints[0])
        return img

    def content_id(self) -> str:
        parts = [self.clutter.fingerprint(), self.objects.fingerprint() if self.objects else "none",
                 str((self.n, self.seed, self.canvas, self.n_clutter, self.object_scale, self.clutter_scale)),
                 f"render{_RENDER_VERSION}"]
        if self.colour:  # keeps the fingerprints of uncoloured sources (and their caches) as they were
            parts.append("colour")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def fashion_clutter_splits(n_train_per_class: int = 300, n_test_per_class: int = 100, n_ood: int = 600,
                           seed: int = 0) -> dict[str, ImageSource]:
    """The ``fashion-clutter`` benchmark's splits.

    ``train``: objects of Fashion-MNIST classes 0-5 (train split), clutter from MNIST-5k images 0-2499;
    ``test``: classes 0-5 from the test split, clutter from MNIST-5k 2500-4999 (disjoint);
    ``clutter-near``: objects of classes 6-9 (test split, ``n_ood // 4`` per class, label -1 as OOD);
    ``clutter-only``: ``n_ood`` canvases with no object. Train/test labels are 0..5 with the Fashion
    class names. Each split has its own layout seed (``seed``, ``seed+1``, ...).
    """
    from tagood.data.arrays import fashion_mnist, mnist5k
    from tagood.data.subset import SubsetSource, select_classes, subsample_per_class

    mn = mnist5k()
    clutter_train = SubsetSource(mn, range(2500), name="mnist5k-a")
    clutter_test = SubsetSource(mn, range(2500, 5000), name="mnist5k-b")
    ftr, fte = fashion_mnist("train"), fashion_mnist("test")
    tr = subsample_per_class(select_classes(ftr, range(6)), n_train_per_class, seed=seed)
    te = subsample_per_class(select_classes(fte, range(6)), n_test_per_class, seed=seed)
    near = subsample_per_class(select_classes(fte, range(6, 10), relabel=False), max(1, n_ood // 4), seed=seed)
    near = SubsetSource(near, range(len(near)), labels=[-1] * len(near))
    return {
        "train": ClutterSource(tr, clutter_train, len(tr), seed=seed, name="clutter-train"),
        "test": ClutterSource(te, clutter_test, len(te), seed=seed + 1, name="clutter-test"),
        "clutter-near": ClutterSource(near, clutter_test, len(near), seed=seed + 2, name="clutter-near"),
        "clutter-only": ClutterSource(None, clutter_test, n_ood, seed=seed + 3, name="clutter-only"),
    }
