"""Cluttered scenes: one object among background clutter (the TagOOD paper's motivating case, Fig. 1).

Each sample is a ``canvas x canvas`` RGB image on a black background holding one object image
(a Fashion-MNIST item) at a seeded random place and scale, and several MNIST digits as background
clutter at seeded random places and scales, placed outside the object's box so they never hide it.
Grayscale items are pasted with their intensity as alpha (they are white-on-black, so a black
canvas keeps them as they are in the source data). ``objects=None`` gives clutter-only canvases.
An image-level detector sees object and clutter mixed in one pooled feature; TagOOD's tag
attention can cut the object out.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from tagood.data.source import ImageSource, Sample


def _boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


class ClutterSource(ImageSource):
    """``n`` cluttered canvases; sample ``i`` uses object ``i % len(objects)`` (label = its label, or -1)."""

    def __init__(self, objects: ImageSource | None, clutter: ImageSource, n: int, seed: int = 0, canvas: int = 224,
                 n_clutter: tuple[int, int] = (3, 6), object_scale: tuple[float, float] = (0.45, 0.7),
                 clutter_scale: tuple[float, float] = (0.12, 0.25), name: str = "clutter") -> None:
        self.objects = objects
        self.clutter = clutter
        self.n = int(n)
        self.seed = seed
        self.canvas = canvas
        self.n_clutter = n_clutter
        self.object_scale = object_scale
        self.clutter_scale = clutter_scale
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

    def layout(self, i: int) -> dict:
        """The seeded layout of sample ``i``: object box and clutter (index, box) list."""
        rng = np.random.default_rng([self.seed, i, 7])
        c = self.canvas
        obj_box = None
        if self.objects is not None:
            s = int(rng.uniform(*self.object_scale) * c)
            x, y = rng.integers(0, c - s + 1, size=2)
            obj_box = (int(x), int(y), int(x + s), int(y + s))
        k = int(rng.integers(self.n_clutter[0], self.n_clutter[1] + 1))
        items = []
        for _ in range(k):
            s = int(rng.uniform(*self.clutter_scale) * c)
            j = int(rng.integers(len(self.clutter)))
            for _try in range(50):
                x, y = (int(v) for v in rng.integers(0, c - s + 1, size=2))
                box = (x, y, x + s, y + s)
                if obj_box is None or not _boxes_overlap(box, obj_box):
                    items.append((j, box))
                    break
        return {"object": obj_box, "clutter": items}

    def _paste(self, canvas: Image.Image, src: Image.Image, box: tuple[int, int, int, int]) -> None:
        size = (box[2] - box[0], box[3] - box[1])
        g = src.convert("L").resize(size, Image.BILINEAR)
        canvas.paste(Image.merge("RGB", (g, g, g)), box[:2], mask=g)

    def _load(self, i: int) -> Image.Image:
        lay = self.layout(i)
        img = Image.new("RGB", (self.canvas, self.canvas), (0, 0, 0))
        for j, box in lay["clutter"]:
            self._paste(img, self.clutter._load(j), box)
        if lay["object"] is not None and self.objects is not None:
            self._paste(img, self.objects._load(i % len(self.objects)), lay["object"])
        return img

    def content_id(self) -> str:
        parts = [self.clutter.fingerprint(), self.objects.fingerprint() if self.objects else "none",
                 str((self.n, self.seed, self.canvas, self.n_clutter, self.object_scale, self.clutter_scale))]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def fashion_clutter_splits(n_train_per_class: int = 300, n_test_per_class: int = 100, n_ood: int = 600,
                           seed: int = 0) -> dict[str, ImageSource]:
    """The ``fashion-clutter`` benchmark's splits.

    ``train``: objects of Fashion-MNIST classes 0-5 (train split), clutter from MNIST-5k images 0-2499;
    ``test``: classes 0-5 from the test split, clutter from MNIST-5k 2500-4999 (disjoint);
    ``clutter-near``: objects of classes 6-9 (test split), ``n_ood`` canvases; ``clutter-only``: no object.
    """
    from tagood.data.arrays import fashion_mnist, mnist5k
    from tagood.data.subset import SubsetSource, select_classes, subsample_per_class

    mn = mnist5k()
    clutter_train = SubsetSource(mn, range(0, 2500), name="mnist5k-a")
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
