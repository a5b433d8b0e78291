"""Image files on disk: class-subfolder trees and list files."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from tagood.data.decode import open_image
from tagood.data.source import DataSourceError, ImageSource, Sample

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _classify(f: Path, exts: set[str]) -> str | None:
    """Why a path with an image extension is not an image file (``None``: it is a regular file)."""
    if f.suffix.lower() not in exts:
        return "ext"
    if f.is_symlink() and not f.exists():
        return "dangling symbolic link"
    if f.is_dir():
        return "directory named like an image"
    if not f.is_file():
        return "not a regular file (FIFO, device or socket)"
    return None


def _report_skipped(root: Path, skipped: list[tuple[str, str]]) -> None:
    """One warning line per kind of skipped entry, naming up to three of them."""
    by: dict[str, list[str]] = {}
    for p, why in skipped:
        by.setdefault(why, []).append(p)
    for why, paths in by.items():
        more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
        plural = "s" if len(paths) > 1 and why.startswith(("dangling", "directory")) else ""
        log.warning("%s: skipped %d %s%s: %s%s", root, len(paths), why, plural, ", ".join(paths[:3]), more)


class _FileSource(ImageSource):
    min_size: int | None = None
    _samples: list[Sample]
    #: entries with an image extension that were left out, with the reason (dangling link, FIFO, ...)
    skipped: list[tuple[str, str]] = []

    @property
    def samples(self) -> list[Sample]:
        return self._samples

    def _load(self, i: int) -> Image.Image:
        return open_image(self.samples[i].ident, min_size=self.min_size)


def _tree(top: Path, unreadable: list[tuple[str, str]]) -> list[Path]:
    """Every entry under ``top`` (files and folders, recursively; a symbolically linked folder is listed, not
    entered), sorted as ``sorted(top.rglob("*"))`` gives them; each folder that cannot be listed is added to
    ``unreadable`` as ``(path, reason)`` instead of being passed over (``Path.rglob`` ignores it)."""
    out: list[Path] = []

    def onerror(e: OSError) -> None:
        unreadable.append((str(e.filename or top), e.strerror or type(e).__name__))

    for dirpath, dirnames, filenames in os.walk(top, onerror=onerror):
        base = Path(dirpath)
        out += [base / n for n in dirnames]
        out += [base / n for n in filenames]
    return sorted(out)


class FolderSource(_FileSource):
    """``root/<class>/**/<image>``: labels from the sorted class-folder names (or ``classes``).

    Images directly under ``root`` (no class folders) form one unlabelled set (label -1). A folder that cannot be
    read (permissions, I/O error) is an error naming it, never passed over; so is a class folder that holds no image
    file, unless ``skip_empty_classes`` is set: then it is left out of the class list with a warning, and
    :attr:`skipped_classes` names it with the reason.

    Args:
        root: the image folder.
        extensions: the file extensions read as images.
        classes: class-folder names in label order (default: the sorted sub-folder names); a given class without a
            folder or without images is allowed (a test folder may lack a class).
        min_size: let JPEG decoding scale down while the shorter side stays at least this.
        skip_empty_classes: leave out (with a warning) a class folder that cannot be read or holds no image, instead
            of raising.
        skip_unreadable: leave out unreadable class folders too (default: as ``skip_empty_classes``); ``False``
            with ``skip_empty_classes`` passes over empty sub-folders only (``tagood score``).

    Raises:
        DataSourceError: ``root`` is missing or unreadable, holds no image, or (without ``skip_empty_classes``) a
            class folder is unreadable or empty; a folder below a class folder cannot be read.
    """

    #: class folders left out by ``skip_empty_classes``: ``(name, reason)``
    skipped_classes: list[tuple[str, str]]

    def __init__(self, root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS, classes: Sequence[str] | None = None,
                 min_size: int | None = 256, skip_empty_classes: bool = False, skip_unreadable: bool | None = None) -> None:
        self.root = Path(root)
        self.min_size = min_size
        self.name = self.root.name
        self.skipped_classes = []
        if not self.root.is_dir():
            raise DataSourceError(f"image folder {self.root} does not exist or is not a directory; pass the folder that "
                                  "holds one sub-folder per class")
        skip_unreadable = skip_empty_classes if skip_unreadable is None else skip_unreadable
        exts = {e.lower() for e in extensions}
        try:
            top = sorted(self.root.iterdir())
        except OSError as e:
            raise DataSourceError(f"cannot list the image folder {self.root} ({e.strerror}); make it readable") from None
        subdirs = sorted(p.name for p in top if p.is_dir() and not p.name.startswith("."))
        samples: list[Sample] = []
        skipped: list[tuple[str, str]] = []

        def usable(f: Path) -> bool:
            why = _classify(f, exts)
            if why is not None and why != "ext":
                skipped.append((str(f), why))
            return why is None

        class_files: dict[str, list[Path]] = {}
        deep_unreadable: list[tuple[str, str]] = []
        for c in subdirs:
            if classes is not None and c not in classes:
                log.warning("%s: folder '%s' is not one of the given classes; skipped", self.root, c)
                continue
            unreadable: list[tuple[str, str]] = []
            files = [f for f in _tree(self.root / c, unreadable) if usable(f)]
            if unreadable and unreadable[0][0] == str(self.root / c):  # the class folder itself cannot be listed
                self._empty_class(c, f"cannot be read ({unreadable[0][1]})", skip_unreadable, classes,
                                  hint=not skip_empty_classes)
                continue
            deep_unreadable += unreadable
            if not files:
                self._empty_class(c, "holds no image file", skip_empty_classes,
                                  classes)
                continue
            class_files[c] = files
        if deep_unreadable:
            more = f" and {len(deep_unreadable) - 3} more" if len(deep_unreadable) > 3 else ""
            raise DataSourceError(f"{self.root}: cannot read the folder(s) "
                                  f"{', '.join(f'{p} ({why})' for p, why in deep_unreadable[:3])}{more}; their images "
                                  "would be left out: make them readable or move them out of the image folder")
        if classes is not None:
            self.class_names: list[str] | None = list(classes)
        else:
            left = [c for c in subdirs if c in class_files]
            self.class_names = left or None
        if subdirs:
            index = {c: k for k, c in enumerate(self.class_names or [])}
            for c in subdirs:
                if c in class_files:
                    samples += [Sample(str(f), index[c]) for f in class_files[c]]
        for f in top:
            if f.is_dir() and (f.suffix.lower() not in exts or f.name in subdirs):
                continue
            if usable(f):
                samples.append(Sample(str(f), -1))
        self.skipped = skipped
        _report_skipped(self.root, skipped)
        if not samples:
            why = (f" ({len(skipped)} entries with an image extension were skipped: dangling links, directories or "
                   "special files)" if skipped else "")
            raise DataSourceError(
                f"no images ({', '.join(sorted(exts))}) found under {self.root}{why}; put the images in one sub-folder "
                "per class (root/<class>/<image>) or pass extensions=... for other file types"
            )
        self._samples = samples

    def _empty_class(self, c: str, why: str, skip: bool, classes: Sequence[str] | None, hint: bool = True) -> None:
        """A class folder ``c`` that cannot be used: an error, or (``skip``) a warning and a smaller class list;
        ``hint``: the error names ``--skip-empty-classes``."""
        path = self.root / c
        if classes is not None and why.startswith("holds no image"):
            return  # a given class may have no images here (a test folder lacking a class)
        if not skip:
            how = ("fix it, remove it, or pass --skip-empty-classes (skip_empty_classes=True) to leave that class out"
                   if hint else "make it readable or move it out of the folder (its images would be left out)")
            raise DataSourceError(f"class folder {path} {why}; {how}")
        log.warning("%s: class folder '%s' %s; left out of the class list", self.root, c, why)
        self.skipped_classes.append((c, why))


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
        try:
            text = self.list_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise DataSourceError(f"list file {self.list_file} is not a UTF-8 text file; give a text file of "
                                  "'path [label]' lines") from None
        except OSError as e:
            raise DataSourceError(f"cannot read list file {self.list_file} ({e.strerror})") from None
        for n, line in enumerate(text.splitlines(), 1):
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
                    raise DataSourceError(  # the line itself is not echoed (the file may be anything)
                        f"{self.list_file}:{n}: the label (the last field of the line) is not an integer; a list file "
                        "has one 'path [label]' line per image"
                    ) from None
            else:
                path = parts[0]
            if label < -1 or (self.class_names is not None and label >= len(self.class_names)):
                top = f"0..{len(self.class_names) - 1}" if self.class_names is not None else "an integer >= 0"
                raise DataSourceError(f"{self.list_file}:{n}: label {label} out of range "
                                      f"(use {top}, or -1 / no label for unlabelled)")
            p = Path(path)
            samples.append(Sample(str(p if p.is_absolute() else self.root / p), label))
        if not samples:
            raise DataSourceError(f"list file {self.list_file} lists no images")
        if not any(os.path.lexists(s.ident) for s in samples):  # stops at the first listed file that exists
            raise DataSourceError(f"none of the {len(samples)} paths listed in {self.list_file} exists under {self.root}; "
                                  "is it a list file of 'path [label]' lines relative to the root?")
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
