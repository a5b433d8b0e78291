"""The image-source contract every dataset implements.

A source is an ordered list of samples; ``load(i)`` decodes sample ``i`` to an RGB PIL image or
raises :class:`ImageDecodeError` naming the file. The extraction pipeline skips, counts and reports
samples that fail to decode; it never aborts a run for one bad file.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tagood.data.decode import ImageDecodeError, to_rgb
from tagood.errors import InputError

__all__ = ["DataSourceError", "ImageDecodeError", "ImageSource", "Sample"]


class DataSourceError(InputError):
    """A source is unusable as a whole (missing directory, empty source, bad list file)."""


@dataclass(frozen=True)
class Sample:
    """One sample: a stable identifier (file path or ``dataset:index``) and an integer label (-1 = none)."""

    ident: str
    label: int = -1


class ImageSource(ABC):
    """Ordered samples plus a decoder. Subclasses implement ``samples`` and ``_load``."""

    #: Human-readable name (used in reports and cache keys).
    name: str = "source"
    #: Class names indexed by label, when known.
    class_names: list[str] | None = None

    @property
    @abstractmethod
    def samples(self) -> list[Sample]:
        """All samples, in a fixed order."""

    @abstractmethod
    def _load(self, i: int) -> Image.Image:
        """Decode sample ``i`` (any mode); raise ImageDecodeError on failure."""

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> Image.Image:
        """Sample ``i`` as an RGB image (grayscale/palette/CMYK/alpha converted)."""
        return to_rgb(self._load(i))

    def fingerprint(self) -> str:
        """A hash of the sample list (identifiers and labels) plus ``content_id()``; keys the cache."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update(self.content_id().encode())
        for s in self.samples:
            h.update(f"{s.ident}\t{s.label}\n".encode())
        return h.hexdigest()[:16]

    def content_id(self) -> str:
        """Extra identity beyond the sample list (e.g. a hash of an in-memory array). Default ''."""
        return ""

    def object_mask(self, i: int) -> np.ndarray | None:
        """The true IND-object pixels of sample ``i``: a bool (H, W) array at the resolution ``load(i)``
        returns (all False when the image holds no IND object), or ``None`` when the source does not know.

        Sources that compose their images (e.g. :class:`tagood.data.scenes.SceneSource`) know it; views
        (:class:`tagood.data.SubsetSource`) forward it with their index mapping. Default: ``None``."""
        return None

    def distractor_mask(self, i: int) -> np.ndarray | None:
        """Like :meth:`object_mask`, for the visible pixels of distractor objects (not IND, not the OOD item)."""
        return None
