"""Jigsaw-shuffled images: pseudo-OOD built from IND images.

FeatureNorm (Yu, Shin, Lee, Jun and Lee, "Block Selection Method for Using Feature Norm in
Out-of-Distribution Detection", CVPR 2023) selects the block whose feature norm best separates IND
training images from jigsaw-puzzle versions of them (NormRatio). The authors' code cuts each
training image into a 3x3 grid of equal tiles and shuffles the 9 tiles with a random permutation,
so ``grid=3`` is the default. Two deliberate differences: the image is first resized to a multiple
of ``grid`` (their integer tile size leaves the last rows/columns black when the side is not a
multiple of 3), and the identity permutation is never used (a random draw gives it with
probability 1/9, which would put unshuffled IND images into the pseudo-OOD set).
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from tagood.data.decode import to_rgb
from tagood.data.source import ImageSource, Sample


class JigsawSource(ImageSource):
    """Each image of ``parent`` cut into ``grid x grid`` patches, shuffled by a per-sample seeded permutation.

    The permutation is never the identity (for grid >= 2). Images are first resized down to a
    multiple of ``grid`` on each side. Labels become -1 (pseudo-OOD).
    """

    def __init__(self, parent: ImageSource, grid: int = 3, seed: int = 0) -> None:
        if grid < 2:
            raise ValueError("grid must be >= 2")
        self.parent = parent
        self.grid = grid
        self.seed = seed
        self.name = f"{parent.name}-jigsaw{grid}"
        self.class_names = None
        self._samples = [Sample(f"jigsaw{grid}:{s.ident}", -1) for s in parent.samples]

    @property
    def samples(self) -> list[Sample]:
        return self._samples

    def permutation(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, i])
        n = self.grid * self.grid
        while True:
            p = rng.permutation(n)
            if not np.array_equal(p, np.arange(n)):
                return p

    def _load(self, i: int) -> Image.Image:
        img = to_rgb(self.parent._load(i))
        g = self.grid
        w, h = img.size
        w2, h2 = max(g, w - w % g), max(g, h - h % g)
        if (w2, h2) != (w, h):
            img = img.resize((w2, h2), Image.Resampling.BILINEAR)
        a = np.asarray(img)
        ph, pw = h2 // g, w2 // g
        patches = a.reshape(g, ph, g, pw, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, ph, pw, 3)
        shuffled = patches[self.permutation(i)]
        out = shuffled.reshape(g, g, ph, pw, 3).transpose(0, 2, 1, 3, 4).reshape(h2, w2, 3)
        return Image.fromarray(np.ascontiguousarray(out), "RGB")

    def content_id(self) -> str:
        return hashlib.sha256(f"{self.parent.fingerprint()}|{self.grid}|{self.seed}".encode()).hexdigest()[:16]
