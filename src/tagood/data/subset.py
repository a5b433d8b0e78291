"""Views of a source: index subsets, seeded (per-class) subsampling, class selection/relabelling."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image

from tagood.data.source import DataSourceError, ImageSource, Sample

log = logging.getLogger(__name__)


class SubsetSource(ImageSource):
    """Samples ``indices`` of ``parent`` (in that order; a sequence or an integer array), optionally with new
    ``labels``."""

    def __init__(self, parent: ImageSource, indices: Sequence[int] | np.ndarray, labels: Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None, name: str | None = None) -> None:
        self.parent = parent
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) == 0:
            raise DataSourceError(f"subset of '{parent.name}' is empty")
        if self.indices.min() < 0 or self.indices.max() >= len(parent):
            raise DataSourceError(f"subset indices out of range for '{parent.name}' ({len(parent)} samples)")
        ps = parent.samples
        labs = [ps[i].label for i in self.indices] if labels is None else [int(y) for y in labels]
        if len(labs) != len(self.indices):
            raise DataSourceError("subset: one label per index is needed")
        self._samples = [Sample(ps[i].ident, y) for i, y in zip(self.indices, labs, strict=True)]
        self.class_names = list(class_names) if class_names is not None else parent.class_names
        self.name = name or parent.name

    @property
    def samples(self) -> list[Sample]:
        return self._samples

    def _load(self, i: int) -> Image.Image:
        return self.parent._load(int(self.indices[i]))

    def object_mask(self, i: int) -> np.ndarray | None:
        """The parent's object mask of the sample this view's ``i`` maps to (None if the parent has none)."""
        return self.parent.object_mask(int(self.indices[i]))

    def distractor_mask(self, i: int) -> np.ndarray | None:
        """The parent's distractor mask of the sample this view's ``i`` maps to (None if the parent has none)."""
        return self.parent.distractor_mask(int(self.indices[i]))

    def focus_mask(self, i: int) -> np.ndarray | None:
        """The parent's mask of what stands in the object's place (its ``focus_mask``, e.g. the scenes'; else its
        object mask) for the sample this view's ``i`` maps to."""
        fn = getattr(self.parent, "focus_mask", None) or self.parent.object_mask
        return fn(int(self.indices[i]))

    def content_id(self) -> str:
        h = hashlib.sha256(self.parent.fingerprint().encode())
        h.update(self.indices.tobytes())
        return h.hexdigest()[:16]


def subsample(source: ImageSource, n: int, seed: int = 0) -> ImageSource:
    """``n`` samples drawn without replacement (seeded), kept in source order; all if ``n >= len``."""
    if n >= len(source):
        return source
    idx = np.sort(np.random.default_rng(seed).choice(len(source), size=n, replace=False))
    return SubsetSource(source, idx)


def subsample_per_class(source: ImageSource, n_per_class: int, seed: int = 0,
                        classes: Sequence[int] | None = None) -> ImageSource:
    """Up to ``n_per_class`` samples of each label (seeded), in source order; unlabelled samples dropped."""
    labels = np.array([s.label for s in source.samples])
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for c in (classes if classes is not None else np.unique(labels[labels >= 0])):
        idx = np.flatnonzero(labels == c)
        if len(idx) < n_per_class:
            log.warning("%s: class %s has %d samples (< %d asked); taking all", source.name, c, len(idx), n_per_class)
            keep.append(idx)
        else:
            keep.append(rng.choice(idx, size=n_per_class, replace=False))
    if not keep:
        raise DataSourceError(f"{source.name}: no labelled samples to subsample per class")
    return SubsetSource(source, np.sort(np.concatenate(keep)))


def select_classes(source: ImageSource, classes: Sequence[int], relabel: bool = True) -> ImageSource:
    """Keep samples whose label is in ``classes``; with ``relabel`` map them to 0..k-1 (class_names follow)."""
    classes = [int(c) for c in classes]
    labels = np.array([s.label for s in source.samples])
    idx = np.flatnonzero(np.isin(labels, classes))
    if len(idx) == 0:
        raise DataSourceError(f"{source.name}: no samples of classes {classes}")
    if not relabel:
        return SubsetSource(source, idx)
    remap = {c: k for k, c in enumerate(classes)}
    names = [source.class_names[c] for c in classes] if source.class_names else None
    return SubsetSource(source, idx, labels=[remap[int(y)] for y in labels[idx]], class_names=names)
