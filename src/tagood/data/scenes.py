"""Real-photo scenes: photo stamps on photo backgrounds, with the true object pixels known.

The ``scenes`` benchmark (issue 10) makes the case TagOOD (Li et al., ACM MM 2024) is built for: the
IND object is one of several objects in a real photograph, an ImageNet tagger can name it, and the
OOD images share background and clutter with the IND images. Each scene is a 256x256 RGB image:

* **Background:** a random square crop (side 50-100% of the region's shorter side, random
  horizontal flip) of one of :data:`BACKGROUNDS`, photographs bundled with scikit-image (astronaut,
  coffee, rocket, camera, brick, grass, gravel, hubble_deep_field) and scikit-learn (china). Train
  scenes crop only the **left half** of each photo, test and OOD scenes only the **right half**
  (split at column ``width // 2``), so no background pixel is shared between train and test.
  (scikit-image's chelsea and motorcycle and scikit-learn's flower are left out: they show a cat, a
  motorcycle and a flower, i.e. objects of IND / near-OOD classes.)
* **Object:** one stamp (see :mod:`tagood.data.stamps`), longer side 50-80% of the canvas, random
  horizontal flip, placed wholly inside the 224x224 centre crop (pixels 16..240) that
  EfficientNet's resize-256 / crop-224 keeps. For ``scene-far`` the object is a Fashion-MNIST test
  item, its intensity used as alpha and tinted with a random hue (as in :mod:`tagood.data.clutter`).
* **Distractors:** 1-4 stamps of distractor groups (longer side 15-30%), anywhere on the canvas,
  drawn below or above the object in random order (partial overlap allowed); a placement that would
  leave less than 60% of the object's pixels visible is redrawn (up to 20 tries, then left out).

**Clutter scenes** (``scene-clutter``, ``standin=True``) have no IND object, but one distractor stamp takes
the object's place: drawn like the object (longer side 50-80%, inside the centre crop, the same 1-4 distractors
around it under the same visibility rule), so the number of items and their sizes have the same distribution as in
the IND scenes and no size or count statistic tells the sets apart (issue 24: with the distractors alone, the size
of the largest item separated IND test from clutter at AUROC 95-100; ``tests/test_scenes.py`` checks the bound).

Compositing is vectorised ``out = a * rgb + (1 - a) * out`` per layer in float32. The masks are
the pixels where a layer's final weight (its alpha times the transparency of every layer above it)
is >= 0.5: :meth:`SceneSource.object_mask` gives the *visible* IND-object pixels after occlusion
(all False for clutter-only and far scenes), :meth:`SceneSource.distractor_mask` those of the
distractors. Everything is deterministic per ``(seed, i)``; the layout (cheap: no RGB) is cached,
so masks never render the image.

The scales were chosen on IND *train* data only: with 80 train-region scenes per class of train-side
stamps, a logistic regression on Lite0 pooled features, 4-fold cross-validated with folds grouped by
stamp instance, reaches 61.2% accuracy with objects at 35-60% / distractors at 20-40% and 72.1% at
50-80% / 15-30% (the tagger must be able to name the object for TagOOD's premise to hold).

Stamps are split **by instance** (a stamp and its ``_mirror`` copy are one instance): per group a
seeded 60% go to train, the rest to test; near-OOD stamps are never in train. See
:func:`scene_splits` for the class split and the counts.
"""

from __future__ import annotations

import colorsys
import hashlib
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from tagood.data.source import DataSourceError, ImageSource, Sample
from tagood.data.stamps import Stamp, load_stamp, read_stamp_list, stamp_list_hash, stamps_root

log = logging.getLogger(__name__)

#: Bumped whenever the rendering changes, so cached features of older scenes are not reused.
RENDER_VERSION = 1
#: Side of a scene in pixels.
CANVAS = 256
#: The EfficientNet centre crop (resize 256, crop 224) keeps pixels [MARGIN, CANVAS - MARGIN).
MARGIN = 16
#: ``(package, name)`` of the background photographs.
BACKGROUNDS: tuple[tuple[str, str], ...] = (
    ("skimage", "astronaut"), ("skimage", "coffee"), ("skimage", "rocket"), ("skimage", "camera"),
    ("skimage", "brick"), ("skimage", "grass"), ("skimage", "gravel"), ("skimage", "hubble_deep_field"),
    ("sklearn", "china"),
)
#: IND classes of the ``scenes`` benchmark (stamp groups), in label order.
IND_GROUPS: tuple[str, ...] = ("mammal", "bird", "fish", "fruit", "musical instrument", "vehicle")
#: Held-out groups whose stamps make ``scene-near``.
NEAR_GROUPS: tuple[str, ...] = ("insect", "vegetable", "flower", "tool")
#: Fraction of each group's instances that go to train.
TRAIN_FRACTION = 0.6
#: Longer side of the object / of a distractor as a fraction of the canvas (chosen on IND train, see module doc).
OBJECT_SCALE = (0.5, 0.8)
DISTRACTOR_SCALE = (0.15, 0.3)
N_DISTRACTORS = (1, 4)
MIN_VISIBLE = 0.6


def _load_photo(package: str, name: str) -> np.ndarray:
    if package == "skimage":
        try:
            import skimage.data as skd
        except ImportError as e:
            raise DataSourceError("scenes need scikit-image's bundled photos: `pip install scikit-image`") from e
        img = skd.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skd, name)()
    elif package == "sklearn":
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    else:
        raise ValueError(f"unknown background package {package!r}")
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


_PHOTOS_LOCK = threading.Lock()


@cache
def _background_photos() -> tuple[np.ndarray, ...]:
    return tuple(_load_photo(p, n) for p, n in BACKGROUNDS)


def background_photos() -> tuple[np.ndarray, ...]:
    """The background photographs of :data:`BACKGROUNDS` as (H, W, 3) uint8 arrays (loaded once per process:
    the decode threads that render the first scenes wait for one load instead of each decoding the photos)."""
    with _PHOTOS_LOCK:
        return _background_photos()


def background_region(photo_shape: tuple[int, ...], region: str) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of a photo's ``"train"`` (left half) or ``"test"`` (right half) region."""
    h, w = photo_shape[:2]
    if region == "train":
        return 0, 0, w // 2, h
    if region == "test":
        return w // 2, 0, w, h
    raise ValueError(f"region must be 'train' or 'test', got {region!r}")


def instance_key(path: str) -> str:
    """A stamp's instance: its path without a ``_mirror`` suffix (a mirrored copy is the same photo)."""
    return re.sub(r"_mirror(?=\.png$)", "", path)


def split_instances(stamps: Sequence[Stamp], seed: int = 0,
                    train_fraction: float = TRAIN_FRACTION) -> dict[str, tuple[list[str], list[str]]]:
    """Per group, ``(train paths, test paths)``: a seeded ``train_fraction`` of its instances (at least
    one each side when the group has two or more) to train, the rest to test; mirrored copies stay together."""
    by_group: dict[str, dict[str, list[str]]] = {}
    for s in stamps:
        by_group.setdefault(s.group, {}).setdefault(instance_key(s.path), []).append(s.path)
    out: dict[str, tuple[list[str], list[str]]] = {}
    for g in sorted(by_group):
        keys = sorted(by_group[g])
        rng = np.random.default_rng([seed, int(hashlib.sha256(g.encode()).hexdigest()[:8], 16)])
        order = [keys[k] for k in rng.permutation(len(keys))]
        n_tr = len(keys) if len(keys) < 2 else min(len(keys) - 1, max(1, round(train_fraction * len(keys))))
        out[g] = (sorted(p for k in order[:n_tr] for p in by_group[g][k]),
                  sorted(p for k in order[n_tr:] for p in by_group[g][k]))
    return out


@dataclass(frozen=True)
class Layer:
    """One pasted item: ``kind`` ("object", "distractor", or "standin": the distractor stamp that takes the object's
    place, at the object's scale, in a ``standin`` source's scenes without an object), ``ref`` (stamp path, or the ink index),
    top-left ``(x, y)``, size ``(w, h)``, ``flip`` (horizontal), ``tint`` (RGB in [0,1], ink only)."""

    kind: str
    ref: str | int
    x: int
    y: int
    w: int
    h: int
    flip: bool
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Layout:
    """A scene's seeded layout: background photo index, crop box and flip, and layers bottom to top."""

    photo: int
    crop: tuple[int, int, int, int]
    bg_flip: bool
    layers: tuple[Layer, ...]


class SceneSource(ImageSource):
    """``len(objects)`` scenes; scene ``i`` holds object ``objects[i]`` (a stamp path, an int index into
    ``ink``, or None for distractors only) with label ``labels[i]``, on a ``region`` background
    ("train" or "test"), with 1-4 distractors drawn from ``distractors`` (stamp paths).

    Deterministic per ``(seed, i)``; see the module docstring for the rendering rules."""

    def __init__(self, objects: Sequence[str | int | None], labels: Sequence[int], distractors: Sequence[str],
                 region: str, seed: int = 0, name: str = "scenes", class_names: Sequence[str] | None = None,
                 ink: np.ndarray | None = None, root: str | Path | None = None,
                 object_scale: tuple[float, float] = OBJECT_SCALE,
                 distractor_scale: tuple[float, float] = DISTRACTOR_SCALE, standin: bool = False) -> None:
        if len(objects) == 0:
            raise DataSourceError(f"{name}: no scenes asked")
        if len(labels) != len(objects):
            raise DataSourceError(f"{name}: one label per scene is needed")
        if not distractors:
            raise DataSourceError(f"{name}: no distractor stamps")
        if any(isinstance(o, (int, np.integer)) for o in objects) and ink is None:
            raise DataSourceError(f"{name}: integer objects index `ink`, which is missing")
        background_region((2, 2), region)  # validates
        for nm, (lo, hi) in (("object_scale", object_scale), ("distractor_scale", distractor_scale)):
            if not 0.0 < lo <= hi <= (CANVAS - 2 * MARGIN) / CANVAS:
                raise ValueError(f"{nm} must be (lo, hi) with 0 < lo <= hi <= {(CANVAS - 2 * MARGIN) / CANVAS}, got {(lo, hi)}")
        self.object_scale = (float(object_scale[0]), float(object_scale[1]))
        self.distractor_scale = (float(distractor_scale[0]), float(distractor_scale[1]))
        #: scenes without an object get a stand-in: a distractor stamp in the object's place, at the object's scale
        self.standin = bool(standin)
        self.root = stamps_root(root)
        self.objects = list(objects)
        self.labels = [int(v) for v in labels]
        self.distractors = sorted(distractors)
        self.region = region
        self.seed = int(seed)
        self.name = name
        self.class_names = list(class_names) if class_names is not None else None
        self.ink = None if ink is None else np.ascontiguousarray(ink, dtype=np.uint8)
        self._samples = [Sample(f"{name}:{i}:{o if o is not None else 'none'}", y)
                         for i, (o, y) in enumerate(zip(self.objects, self.labels, strict=True))]
        self._stamps: dict[str, np.ndarray] = {}
        self._stamp_images: dict[tuple[str, str], Image.Image] = {}
        self._layouts: dict[int, Layout] = {}

    @property
    def samples(self) -> list[Sample]:
        return self._samples

    # -- layout ------------------------------------------------------------------------------
    def _stamp(self, path: str) -> np.ndarray:
        a = self._stamps.get(path)
        if a is None:
            a = self._stamps[path] = load_stamp(self.root, path)
        return a

    def _stamp_image(self, path: str, mode: str) -> Image.Image:
        """Stamp ``path`` as a PIL image to resize: ``"RGBa"`` (alpha-premultiplied, what Pillow converts an RGBA
        image to before resampling it) or ``"L"`` (its alpha channel); made once per stamp, not once per scene."""
        im = self._stamp_images.get((path, mode))
        if im is None:
            a = self._stamp(path)
            im = (Image.fromarray(a, "RGBA").convert("RGBa") if mode == "RGBa" else
                  Image.fromarray(np.ascontiguousarray(a[..., 3]), "L"))
            self._stamp_images[(path, mode)] = im
        return im

    def _item_size(self, ref: str | int, rng: np.random.Generator, scale: tuple[float, float]) -> tuple[int, int]:
        h, w = (self.ink.shape[1:3] if isinstance(ref, (int, np.integer)) else self._stamp(str(ref)).shape[:2])  # type: ignore[union-attr]
        longest = rng.uniform(*scale) * CANVAS
        f = longest / max(h, w)
        return max(2, round(w * f)), max(2, round(h * f))

    def layout(self, i: int) -> Layout:
        """The seeded layout of scene ``i`` (cached)."""
        lay = self._layouts.get(i)
        if lay is not None:
            return lay
        rng = np.random.default_rng([self.seed, i, 1013])
        photos = background_photos()
        b = int(rng.integers(len(photos)))
        x0, y0, x1, y1 = background_region(photos[b].shape, self.region)
        short = min(x1 - x0, y1 - y0)
        side = max(16, int(rng.uniform(0.5, 1.0) * short))
        cx = x0 + int(rng.integers(0, x1 - x0 - side + 1))
        cy = y0 + int(rng.integers(0, y1 - y0 - side + 1))
        bg_flip = bool(rng.integers(2))
        obj = self.objects[i]
        kind = "object"
        if obj is None and self.standin:  # a distractor takes the object's place, at the object's size
            obj, kind = self.distractors[int(rng.integers(len(self.distractors)))], "standin"
        obj_layer = None
        if obj is not None:
            w, h = self._item_size(obj, rng, self.object_scale)
            ox = int(rng.integers(MARGIN, CANVAS - MARGIN - w + 1))
            oy = int(rng.integers(MARGIN, CANVAS - MARGIN - h + 1))
            tint = (1.0, 1.0, 1.0)
            if isinstance(obj, (int, np.integer)):
                tint = colorsys.hsv_to_rgb(float(rng.uniform()), 0.75, 1.0)
            obj_layer = Layer(kind, obj if isinstance(obj, str) else int(obj), ox, oy, w, h,
                              bool(rng.integers(2)), tint)
        k = int(rng.integers(N_DISTRACTORS[0], N_DISTRACTORS[1] + 1))
        below: list[Layer] = []
        above: list[Layer] = []
        obj_alpha = self._alpha(obj_layer) if obj_layer is not None else None
        for _ in range(k):
            d = self.distractors[int(rng.integers(len(self.distractors)))]
            w, h = self._item_size(d, rng, self.distractor_scale)
            on_top = obj_layer is not None and bool(rng.integers(2))
            flip = bool(rng.integers(2))
            for _try in range(20):
                lx = int(rng.integers(0, CANVAS - w + 1))
                ly = int(rng.integers(0, CANVAS - h + 1))
                layer = Layer("distractor", d, lx, ly, w, h, flip)
                if not on_top or self._visible_fraction(obj_layer, obj_alpha, above + [layer]) >= MIN_VISIBLE:  # type: ignore[arg-type]
                    (above if on_top else below).append(layer)
                    break
            else:
                log.debug("%s: scene %d: distractor %s left out (would hide the object)", self.name, i, d)
        layers = tuple(below + ([obj_layer] if obj_layer is not None else []) + above)
        lay = Layout(b, (cx, cy, cx + side, cy + side), bg_flip, layers)
        self._layouts[i] = lay
        return lay

    # -- rendering ---------------------------------------------------------------------------
    def _pixels(self, layer: Layer, rgb: bool) -> tuple[np.ndarray | None, np.ndarray]:
        """``(rgb float32 (h, w, 3) in [0, 255] or None, alpha float32 (h, w) in [0, 1])`` of a resized layer."""
        if isinstance(layer.ref, int):
            assert self.ink is not None
            g = Image.fromarray(self.ink[layer.ref]).resize((layer.w, layer.h), Image.Resampling.BILINEAR)
            alpha = np.asarray(g, dtype=np.float32) / 255.0
            col = np.broadcast_to(np.asarray(layer.tint, dtype=np.float32) * 255.0, (layer.h, layer.w, 3)) if rgb else None
        else:
            a = self._stamp(layer.ref)
            size = (layer.w, layer.h)
            if rgb:
                # what Image.resize does to an RGBA image (premultiply, resample, unpremultiply), with the premultiplied
                # stamp made once; at the stamp's own size Pillow returns an unchanged copy, and so does this
                same = size == (a.shape[1], a.shape[0])
                im = np.asarray(a if same else self._stamp_image(layer.ref, "RGBa").resize(size, Image.Resampling.BILINEAR)
                                .convert("RGBA"), dtype=np.float32)
                col, alpha = im[..., :3], im[..., 3] / 255.0
            else:
                col = None
                grey = self._stamp_image(layer.ref, "L").resize(size, Image.Resampling.BILINEAR)
                alpha = np.asarray(grey, dtype=np.float32) / 255.0
        if layer.flip:
            alpha = alpha[:, ::-1]
            col = col[:, ::-1] if col is not None else None
        return col, alpha

    def _alpha(self, layer: Layer) -> np.ndarray:
        return self._pixels(layer, rgb=False)[1]

    @staticmethod
    def _full(layer: Layer, alpha: np.ndarray) -> np.ndarray:
        out = np.zeros((CANVAS, CANVAS), dtype=np.float32)
        out[layer.y:layer.y + layer.h, layer.x:layer.x + layer.w] = alpha
        return out

    def _visible_fraction(self, obj: Layer, obj_alpha: np.ndarray, above: Sequence[Layer]) -> float:
        trans = np.ones((CANVAS, CANVAS), dtype=np.float32)
        for lay in above:
            trans[lay.y:lay.y + lay.h, lay.x:lay.x + lay.w] *= 1.0 - self._alpha(lay)
        full = self._full(obj, obj_alpha)
        own = full >= 0.5
        return float(((full * trans) >= 0.5).sum() / max(1, own.sum()))

    def _weights(self, lay: Layout) -> list[np.ndarray]:
        """Final weight of each layer (its alpha times the transparency of all layers above), canvas-sized."""
        alphas = [self._full(layer, self._alpha(layer)) for layer in lay.layers]
        trans = np.ones((CANVAS, CANVAS), dtype=np.float32)
        out: list[np.ndarray] = [np.empty(0)] * len(alphas)
        for k in range(len(alphas) - 1, -1, -1):
            out[k] = alphas[k] * trans
            trans *= 1.0 - alphas[k]
        return out

    @lru_cache(maxsize=64)  # noqa: B019 (per-instance cache of two small masks, bounded)
    def _masks(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lay = self.layout(i)
        w = self._weights(lay)
        obj = np.zeros((CANVAS, CANVAS), dtype=bool)
        dis = np.zeros((CANVAS, CANVAS), dtype=bool)
        dsum = np.zeros((CANVAS, CANVAS), dtype=np.float32)
        for layer, wk in zip(lay.layers, w, strict=True):
            if layer.kind == "object":
                if not isinstance(layer.ref, int):  # far items (Fashion-MNIST ink) are not IND objects
                    obj = wk >= 0.5
            else:  # distractors, the stand-in included
                dsum += wk
        dis = dsum >= 0.5
        return obj, dis

    def focus_mask(self, i: int) -> np.ndarray:
        """Visible pixels of whatever stands in the object's place in scene ``i`` (bool (256, 256)): the IND
        object (train / test), the near-OOD object, the far (ink) item, or the clutter scene's stand-in distractor;
        all False for a scene with none (clutter without ``standin``). The oracle decomposition reads it."""
        lay = self.layout(int(i))
        for layer, wk in zip(lay.layers, self._weights(lay), strict=True):
            if layer.kind in ("object", "standin"):
                return wk >= 0.5
        return np.zeros((CANVAS, CANVAS), dtype=bool)

    def object_mask(self, i: int) -> np.ndarray:
        """Visible IND-object pixels of scene ``i`` (bool (256, 256)); all False without an IND object."""
        return self._masks(int(i))[0].copy()

    def distractor_mask(self, i: int) -> np.ndarray:
        """Visible distractor pixels of scene ``i`` (bool (256, 256))."""
        return self._masks(int(i))[1].copy()

    def far_mask(self, i: int) -> np.ndarray:
        """Visible pixels of the far (ink) item of scene ``i``; all False for other scenes."""
        lay = self.layout(int(i))
        for layer, wk in zip(lay.layers, self._weights(lay), strict=True):
            if layer.kind == "object" and isinstance(layer.ref, int):
                return wk >= 0.5
        return np.zeros((CANVAS, CANVAS), dtype=bool)

    def background(self, i: int) -> np.ndarray:
        """The background of scene ``i`` alone, float32 (256, 256, 3) in [0, 255]."""
        lay = self.layout(int(i))
        x0, y0, x1, y1 = lay.crop
        bg = Image.fromarray(background_photos()[lay.photo][y0:y1, x0:x1]).resize((CANVAS, CANVAS), Image.Resampling.BILINEAR)
        out = np.asarray(bg, dtype=np.float32)
        return np.ascontiguousarray(out[:, ::-1]) if lay.bg_flip else out.copy()

    def _load(self, i: int) -> Image.Image:
        lay = self.layout(int(i))
        out = self.background(i)
        for layer in lay.layers:
            col, alpha = self._pixels(layer, rgb=True)
            assert col is not None
            sl = out[layer.y:layer.y + layer.h, layer.x:layer.x + layer.w]
            a = alpha[..., None]
            sl *= 1.0 - a
            sl += a * col
        return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")

    def content_id(self) -> str:
        parts = [f"render{RENDER_VERSION}", stamp_list_hash(), self.region, str(self.seed), repr(BACKGROUNDS),
                 repr((CANVAS, MARGIN, self.object_scale, self.distractor_scale, N_DISTRACTORS, MIN_VISIBLE)),
                 "|".join(self.distractors)]
        if self.ink is not None:
            parts.append(hashlib.sha256(self.ink.tobytes()).hexdigest())
        if self.standin:  # keeps the fingerprints (and caches) of the other parts as they were
            parts.append("standin")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def scene_splits(n_train_per_class: int = 200, n_test_per_class: int = 50, n_ood: int = 300, seed: int = 0,
                 root: str | Path | None = None) -> dict[str, ImageSource]:
    """The ``scenes`` benchmark's parts: ``train``, ``test``, ``scene-near``, ``scene-clutter``, ``scene-far``.

    IND classes (labels 0..5, names = stamp groups): :data:`IND_GROUPS` = mammal, bird, fish, fruit, musical instrument,
    vehicle (photographic stamps per group: 65, 35, 11, 25, 11, 23; split by instance 60/40, seed 0: train / test
    instances 39/26, 21/14, 7/4, 15/10, 7/4, 13/10). ``scene-near``: stamps of :data:`NEAR_GROUPS` = insect 8, vegetable
    18, flower 24, tool 12 (all instances; never in train), ``n_ood`` scenes cycling through the groups.
    ``scene-clutter``: ``n_ood`` scenes of test-region background and test distractors only, one of them in the
    object's place at the object's scale (``standin=True``: no size or count statistic tells them from IND scenes).
    ``scene-far``: ``n_ood``
    scenes whose object is a tinted Fashion-MNIST test item. Distractors: every other group's stamps (16 groups:
    kitchenware, household items, trees, sports equipment, ...), split by instance (seed 0: 33 train / 24 test stamps);
    train scenes use the train half, all other parts the test half. Scenes per IND class are balanced; the object stamp
    of each scene is a seeded draw among the class's instances of that side. Each part has its own layout seed
    (``seed``, ``seed + 1``, ...).
    """
    stamps = read_stamp_list()
    groups = {s.group for s in stamps}
    for g in IND_GROUPS + NEAR_GROUPS:
        if g not in groups:
            raise DataSourceError(f"stamp list has no '{g}' stamps; regenerate it with scripts/make_stamp_list.py")
    split = split_instances(stamps, seed=seed)
    dis_groups = sorted(groups - set(IND_GROUPS) - set(NEAR_GROUPS))
    dis_train = [p for g in dis_groups for p in split[g][0]]
    dis_test = [p for g in dis_groups for p in split[g][1]]
    names = list(IND_GROUPS)
    rng = np.random.default_rng([seed, 42])

    def ind(side: int, per_class: int) -> tuple[list[str | int | None], list[int]]:
        objs: list[str | int | None] = []
        labs: list[int] = []
        for c, g in enumerate(IND_GROUPS):
            pool = split[g][side]
            objs += [pool[int(k)] for k in rng.integers(len(pool), size=per_class)]
            labs += [c] * per_class
        return objs, labs

    tr_o, tr_l = ind(0, n_train_per_class)
    te_o, te_l = ind(1, n_test_per_class)
    near_pools = [sorted(s.path for s in stamps if s.group == g) for g in NEAR_GROUPS]
    near_o: list[str | int | None] = [near_pools[i % len(near_pools)][int(rng.integers(len(near_pools[i % len(near_pools)])))]
                                      for i in range(n_ood)]
    from tagood.data.arrays import fashion_mnist

    fm = fashion_mnist("test")
    ink_idx = np.sort(rng.choice(len(fm.images), size=n_ood, replace=False))
    ink = np.asarray(fm.images)[ink_idx]
    none: list[int] = [-1] * n_ood
    return {
        "train": SceneSource(tr_o, tr_l, dis_train, "train", seed=seed, name="scenes-train", class_names=names, root=root),
        "test": SceneSource(te_o, te_l, dis_test, "test", seed=seed + 1, name="scenes-test", class_names=names, root=root),
        "scene-near": SceneSource(near_o, none, dis_test, "test", seed=seed + 2, name="scene-near", root=root),
        "scene-clutter": SceneSource([None] * n_ood, none, dis_test, "test", seed=seed + 3, name="scene-clutter", root=root,
                                     standin=True),
        "scene-far": SceneSource(list(range(n_ood)), none, dis_test, "test", seed=seed + 4, name="scene-far", ink=ink, root=root),
    }
