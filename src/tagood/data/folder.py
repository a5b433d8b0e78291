"""Image files on disk: class-subfolder trees and list files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from tagood.data.decode import open_image
from tagood.data.source import DataSourceError, ImageSource, Sample

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class _FileSource(ImageSource):
    min_size: int | None = None
    _samples: list[Sample]

    @property
    def samples(self) -> list[Sample]:
        return self._samples

    def _load(self, i: int) -> Image.Image:
        return open_image(self.samples[i].ident, min_size=self.min_size)


class FolderSource(_FileSource):
    """``root/<class>/**/<image>``: labels from the sorted class-folder names (or ``classes``).

    Images directly under ``root`` (no class folders) form one unlabelled set (label -1).
    """

    def __init__(self, root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS, classes: Sequence[str] | None = None,
                 min_size: int | None = 256) -> None:
        self.root = Path(root)
        self.min_size = min_size
        self.name = self.root.name
        if not self.root.is_dir():
            raise DataSourceError(f"image folder {self.root} does not exist or is not a directory; pass the folder that holds one sub-folder per class")
        exts = {e.lower() for e in extensions}
        subdirs = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.class_names = list(classes) if classes is not None else (subdirs or None)
        samples: list[Sample] = []
        if subdirs:
            index = {c: k for k, c in enumerate(self.class_names or [])}
            for c in subdirs:
                if c not in index:
                    log.warning("%s: folder '%s' is not one of the given classes; skipped", self.root, c)
                    continue
                for f in sorted((self.root / c).rglob("*")):
                    if f.suffix.lower() in exts and f.is_file():
                        samples.append(Sample(str(f), index[c]))
        for f in sorted(self.root.glob("*")):
            if f.suffix.lower() in exts and f.is_file():
                samples.append(Sample(str(f), -1))
        if not samples:
            raise DataSourceError(
                f"no images ({', '.join(sorted(exts))}) found under {self.root}; put the images in one sub-folder "
                "per class (root/<class>/<image>) or pass extensions=... for other file types"
            )
        self._samples = samples


class ListFileSource(_FileSource):
    """A text file of ``path [label]`` lines, paths relative to ``root``; ``#`` comments and blank lines ignored.

    The label is the last whitespace-separated token; lines without one get label -1. A label that
    is not an integer, is below -1 or (when ``class_names`` is given) names no class is an error
    naming ``file:line``. Listed files are not checked here: a missing or corrupt one fails only
    when loaded (:class:`ImageDecodeError`), so the extraction can skip and report it.
    """

    def __init__(self, list_file: str | Path, root: str | Path, class_names: Sequence[str] | None = None,
                 min_size: int | None = 256) -> None:
        self.list_file = Path(list_file)
        self.root = Path(root)
        self.min_size = min_size
        self.name = self.list_file.stem
        self.class_names = list(class_names) if class_names is not None else None
        if not self.list_file.is_file():
            raise DataSourceError(f"list file {self.list_file} does not exist")
        if not self.root.is_dir():
            raise DataSourceError(f"image root {self.root} (for {self.list_file}) does not exist")
        samples: list[Sample] = []
        for n, line in enumerate(self.list_file.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            label = -1
            if len(parts) == 2:
                try:
                    label = int(parts[1])
                    path = parts[0]
                except ValueError:
                    raise DataSourceError(
                        f"{self.list_file}:{n}: label '{parts[1]}' is not an integer (lines are 'path [label]')"
                    ) from None
            else:
                path = parts[0]
            if label < -1 or (self.class_names is not None and label >= len(self.class_names)):
                top = f"0..{len(self.class_names) - 1}" if self.class_names is not None else "an integer >= 0"
                raise DataSourceError(f"{self.list_file}:{n}: label {label} out of range (use {top}, or -1 / no label for unlabelled)")
            p = Path(path)
            samples.append(Sample(str(p if p.is_absolute() else self.root / p), label))
        if not samples:
            raise DataSourceError(f"list file {self.list_file} lists no images")
        self._samples = samples


class FilesSource(_FileSource):
    """An explicit list of image files (unlabelled)."""

    def __init__(self, paths: Sequence[str | Path], name: str = "files", min_size: int | None = 256) -> None:
        if not paths:
            raise DataSourceError("no image files given")
        self.name = name
        self.min_size = min_size
        self.class_names = None
        self._samples = [Sample(str(Path(p)), -1) for p in paths]
