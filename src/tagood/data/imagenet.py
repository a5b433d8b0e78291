"""The ImageNet-1K OOD benchmark on the user's disk: expected layout, sources, image-count checks,
and a starting RAM tag vocabulary for the 1000 classes.

IND: ImageNet-1K (ILSVRC 2012; Russakovsky et al., IJCV 2015): train for fitting, val (50,000) as
the IND test set. OOD sets as used by TagOOD (Li et al., ACM MM 2024), following MOS (Huang & Li,
CVPR 2021) for iNaturalist / SUN / Places / Textures and ViM (Wang et al., CVPR 2022) for
OpenImage-O / ImageNet-O; and OpenOOD v1.5's ImageNet-1K splits (Zhang et al., "OpenOOD v1.5: Enhanced
Benchmark for Out-of-Distribution Detection", 2023): near-OOD SSB-hard (Vaze et al., ICLR 2022) and NINCO
(Bitterwolf et al., ICML 2023), far-OOD iNaturalist, Textures and OpenImage-O (:data:`OPENOOD_GROUPS`).

Expected layout under a user-given ``root`` (folder names are matched case-insensitively, ``-``
and ``_`` ignored, so ``OpenImage-O``, ``openimage_o`` and ``openimageo`` are the same)::

    root/
      imagenet/train/<wnid>/*.JPEG      IND train (ILSVRC 2012 train layout, 1,281,167 images)
      imagenet/val/<wnid>/*.JPEG        IND test: val sorted into wnid folders (50,000)
        or imagenet/val.txt             list file "<path relative to root/imagenet> <label 0..999>"
      inaturalist/**                    iNaturalist OOD subset of MOS (10,000); alias iNaturalist
      sun/**                            SUN OOD subset of MOS (10,000)
      places/**                         Places365 OOD subset of MOS (10,000); alias places365
      textures/**                       DTD (5,640; ViM's list drops 4 ImageNet-like classes: 5,160); alias dtd, texture
      openimage_o/**                    OpenImage-O of ViM (17,632; OpenOOD v1.5's list: 15,869); alias openimage
      imagenet_o/**                     ImageNet-O (Hendrycks et al., CVPR 2021) (2,000)
      ssb_hard/**                       SSB-hard, OpenOOD v1.5 near-OOD (49,000); alias ssb, ssbhard
      ninco/**                          NINCO, OpenOOD v1.5 near-OOD (5,879)

Any OOD set may instead be a list file ``root/<name>.txt`` ("path" per line, relative to
``root/<name>/`` when that folder exists, else to ``root``), which takes precedence over the
folder. OOD images are unlabelled (label -1) whatever sub-folders they sit in (ImageNet-O's
folders are ImageNet wnids, yet its images are OOD). An image count that differs from the
expected one is logged as a warning with both numbers (cleaned versions of these sets exist),
never an error.

Decoding: ``min_size=None`` decodes JPEGs at full resolution; pass e.g. 384 for RAM or 224 for
CLIP to let PIL decode large JPEGs at a reduced scale that still covers the model input.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from tagood.data.folder import (
    IMAGE_EXTENSIONS,
    FilesSource,
    FolderSource,
    ListFileSource,
)
from tagood.data.source import DataSourceError, ImageSource

log = logging.getLogger(__name__)

#: Image counts of the standard versions (MOS / ViM / ILSVRC 2012).
EXPECTED_COUNTS: dict[str, int] = {
    "train": 1_281_167,
    "val": 50_000,
    "inaturalist": 10_000,
    "sun": 10_000,
    "places": 10_000,
    "textures": 5_640,
    "openimage_o": 17_632,
    "imagenet_o": 2_000,
    "ssb_hard": 49_000,
    "ninco": 5_879,
}
#: Other published versions of a set: a count in here is not warned about (Textures: ViM's and OpenOOD v1.5's
#: list without 4 ImageNet-like DTD classes; OpenImage-O: OpenOOD v1.5's list).
OTHER_COUNTS: dict[str, tuple[int, ...]] = {"textures": (5_160,), "openimage_o": (15_869,)}
#: The OOD sets, in the TagOOD paper's table order.
OOD_SETS: tuple[str, ...] = ("inaturalist", "sun", "places", "textures", "openimage_o", "imagenet_o")
#: OpenOOD v1.5's ImageNet-1K near-OOD and far-OOD sets (its FPR95 takes OOD as positive: ``fpr95_ood_pos``).
OPENOOD_NEAR: tuple[str, ...] = ("ssb_hard", "ninco")
OPENOOD_FAR: tuple[str, ...] = ("inaturalist", "textures", "openimage_o")
OPENOOD_GROUPS: dict[str, tuple[str, ...]] = {"near": OPENOOD_NEAR, "far": OPENOOD_FAR}
#: The MOS 4-set (iNaturalist, SUN, Places, Textures) whose average most CLIP papers report.
MOS_4SET: tuple[str, ...] = ("inaturalist", "sun", "places", "textures")
#: Every OOD set this module knows, in table order: TagOOD's, then OpenOOD v1.5's near-OOD sets.
ALL_OOD_SETS: tuple[str, ...] = OOD_SETS + OPENOOD_NEAR
#: Human-readable names for reports.
DISPLAY_NAMES: dict[str, str] = {
    "val": "ImageNet-1K", "train": "ImageNet-1K train", "inaturalist": "iNaturalist", "sun": "SUN", "places": "Places",
    "textures": "Textures", "openimage_o": "OpenImage-O", "imagenet_o": "ImageNet-O", "ssb_hard": "SSB-hard",
    "ninco": "NINCO",
}
_ALIASES: dict[str, tuple[str, ...]] = {
    "inaturalist": ("inaturalist", "inat"),
    "sun": ("sun", "sun397"),
    "places": ("places", "places365"),
    "textures": ("textures", "texture", "dtd"),
    "openimage_o": ("openimageo", "openimage", "openimageso"),
    "imagenet_o": ("imageneto",),
    "ssb_hard": ("ssbhard", "ssb"),
    "ninco": ("ninco",),
}


def _norm(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


def _find(root: Path, part: str) -> tuple[Path | None, Path | None]:
    """(folder, list file) of an OOD set under ``root``, either may be None."""
    aliases = set(_ALIASES[part])
    folder = listfile = None
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.is_dir() and _norm(p.name) in aliases and folder is None:
                folder = p
            elif p.is_file() and p.suffix == ".txt" and _norm(p.stem) in aliases and listfile is None:
                listfile = p
    return folder, listfile


def check_count(source: ImageSource, part: str) -> int:
    """Compare the source's image count with the expected one; log a warning on a mismatch."""
    n, want = len(source), EXPECTED_COUNTS.get(part)
    others = OTHER_COUNTS.get(part, ())
    if want is not None and n != want and n not in others:
        also = f" (or {', '.join(str(o) for o in others)} in another published version)" if others else ""
        log.warning("%s: found %d images where the standard set has %d%s (%+d); results are not comparable with "
                    "published numbers unless this is intended", DISPLAY_NAMES.get(part, part), n, want, also, n - want)
    else:
        log.info("%s: %d images", DISPLAY_NAMES.get(part, part), n)
    return n


def _imagenet_dir(root: Path) -> Path:
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.is_dir() and _norm(p.name) in ("imagenet", "imagenet1k", "ilsvrc2012", "ilsvrc"):
            return p
    raise DataSourceError(f"no 'imagenet' folder under {root}; expected {root}/imagenet/train/<wnid>/ and "
                          f"{root}/imagenet/val/<wnid>/ (or {root}/imagenet/val.txt)")


def _with_names(src: ImageSource, name: str) -> ImageSource:
    from tagood.assets import imagenet_classes

    src.class_names = imagenet_classes()
    src.name = name
    return src


def imagenet_split(root: str | Path, split: str = "val", min_size: int | None = None, check: bool = True) -> ImageSource:
    """ImageNet-1K ``train`` or ``val`` (labels 0..999 in the standard wnid order, class names readable)."""
    from tagood.assets import imagenet_wnids

    if split not in ("train", "val"):
        raise ValueError(f"ImageNet split must be 'train' or 'val', got {split!r}")
    base = _imagenet_dir(Path(root))
    listfile = base / f"{split}.txt"
    folder = base / split
    if listfile.is_file():
        src: ImageSource = ListFileSource(listfile, base, min_size=min_size)
        bad = [s.ident for s in src.samples if not 0 <= s.label < 1000]
        if bad:
            raise DataSourceError(f"{listfile}: {len(bad)} lines without a label in 0..999 (first: {bad[0]}); "
                                  "lines must be '<path> <label>'")
    elif folder.is_dir():
        wnids = imagenet_wnids()
        src = FolderSource(folder, classes=wnids, min_size=min_size)
        found = {s.label for s in src.samples}
        if -1 in found:
            raise DataSourceError(f"{folder} holds images outside wnid folders; sort them into {folder}/<wnid>/")
        if len(found) != 1000:
            log.warning("%s: images of %d of the 1000 ImageNet classes found", folder, len(found))
    else:
        raise DataSourceError(f"ImageNet {split} not found: expected {folder}/<wnid>/*.JPEG or the list file {listfile}")
    src = _with_names(src, "imagenet-" + split)
    if check:
        check_count(src, split)
    return src


def imagenet_train_source(root: str | Path, min_size: int | None = None, check: bool = True) -> ImageSource:
    """The IND train source from ``root/imagenet/train/<wnid>/`` (or ``root/imagenet/train.txt``)."""
    return imagenet_split(root, "train", min_size=min_size, check=check)


def ood_source(root: str | Path, part: str, min_size: int | None = None, check: bool = True) -> ImageSource:
    """One OOD set (``inaturalist``, ``sun``, ``places``, ``textures``, ``openimage_o``, ``imagenet_o``, ``ssb_hard``,
    ``ninco``), unlabelled."""
    if part not in _ALIASES:
        raise ValueError(f"unknown OOD set {part!r}; use one of {', '.join(ALL_OOD_SETS)}")
    r = Path(root)
    folder, listfile = _find(r, part)
    if listfile is not None:
        base = folder if folder is not None else r
        src: ImageSource = ListFileSource(listfile, base, min_size=min_size)
        if folder is not None:
            log.info("%s: using the list file %s (paths relative to %s)", DISPLAY_NAMES[part], listfile, base)
    elif folder is not None:
        exts = {e.lower() for e in IMAGE_EXTENSIONS}
        files = sorted(str(f) for f in folder.rglob("*") if f.suffix.lower() in exts and f.is_file())
        if not files:
            raise DataSourceError(f"no images under {folder} for {DISPLAY_NAMES[part]}")
        src = FilesSource(files, name=part, min_size=min_size)
    else:
        raise DataSourceError(f"{DISPLAY_NAMES[part]} not found under {r}: expected a folder {r}/{part}/ (aliases: "
                              f"{', '.join(_ALIASES[part])}) or a list file {r}/{part}.txt")
    if any(s.label != -1 for s in src.samples):
        from tagood.data.subset import SubsetSource

        src = SubsetSource(src, list(range(len(src))), labels=[-1] * len(src))
    src.class_names = None
    src.name = part
    if check:
        check_count(src, part)
    return src


def imagenet_source(root: str | Path, part: str = "val", min_size: int | None = None, check: bool = True) -> ImageSource:
    """Any part of the benchmark: ``train``, ``val`` or one of :data:`ALL_OOD_SETS` (aliases accepted)."""
    key = _norm(part)
    if key in ("train", "val", "test"):
        return imagenet_split(root, "val" if key == "test" else key, min_size=min_size, check=check)
    for name, aliases in _ALIASES.items():
        if key in aliases:
            return ood_source(root, name, min_size=min_size, check=check)
    raise ValueError(f"unknown ImageNet benchmark part {part!r}; use train, val or one of {', '.join(ALL_OOD_SETS)}")


def available_ood_sets(root: str | Path) -> list[str]:
    """The OOD sets present under ``root`` (folder or list file), in table order (:data:`ALL_OOD_SETS`)."""
    r = Path(root)
    return [p for p in ALL_OOD_SETS if any(x is not None for x in _find(r, p))]


# -- starting tag vocabulary ------------------------------------------------------------------------
def _words(s: str) -> str:
    return " ".join(re.sub(r"[_\-/,.'()]", " ", s.lower()).split())


def _endings(phrase: str) -> list[str]:
    """The word suffixes of a phrase, shortest first: "great white shark" -> shark, white shark, great white shark."""
    w = phrase.split()
    return [" ".join(w[a:]) for a in range(len(w) - 1, -1, -1)]


@lru_cache(maxsize=2)
def _wordnet_nouns(data_noun: str) -> dict[str, tuple[list[str], list[str]]]:
    """offset -> (lemma names, hypernym offsets) from a WordNet 3.0 ``data.noun`` file."""
    table: dict[str, tuple[list[str], list[str]]] = {}
    with open(data_noun, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):  # licence header
                continue
            parts = line.split(" | ", 1)[0].split()
            n = int(parts[3], 16)
            lemmas = [parts[4 + 2 * i].replace("_", " ") for i in range(n)]
            p_at = 4 + 2 * n
            hyper = [parts[p_at + 2 + 4 * i] for i in range(int(parts[p_at])) if parts[p_at + 1 + 4 * i] in ("@", "@i")]
            table[parts[0]] = (lemmas, hyper)
    return table


def _wordnet_hypernym_names(wnid: str, wordnet_dir: Path, max_depth: int = 6) -> list[list[str]]:
    """Lemma names of the hypernyms of a noun synset, nearest first (breadth-first, ``max_depth`` levels)."""
    data = wordnet_dir / "data.noun"
    if not data.is_file():
        raise DataSourceError(f"{data} not found; pass the WordNet 3.0 'dict' folder that holds data.noun")
    table = _wordnet_nouns(str(data))
    out: list[list[str]] = []
    frontier = list(table.get(wnid.lstrip("n"), ([], []))[1])
    for _ in range(max_depth):
        nxt: list[str] = []
        for off in frontier:
            lemmas, hyper = table.get(off, ([], []))
            out.append(lemmas)
            nxt.extend(hyper)
        frontier = nxt
        if not frontier:
            break
    return out


def ram_vocabulary_for_imagenet(tag_names: Sequence[str], class_names: Sequence[str],
                                synonyms: Sequence[Sequence[str]] | None = None, wnids: Sequence[str] | None = None,
                                wordnet_dir: str | Path | None = None) -> list[int]:
    """One RAM tag index per class (-1 when nothing matches), by name matching.

    A starting vocabulary for when no training tags are available; TagOOD's own vocabulary builder
    (the most frequent tag among each class's training images, :mod:`tagood.detectors.tagood.vocabulary`) is
    the primary path. Matching (case-insensitive, ``_ - / , . ' ( )`` treated as spaces), first hit wins:

    1. a tag equal to the class name;
    2. a tag equal to one of the class's synonyms (for the 1000 standard classes, the packaged
       WordNet synonyms are used when ``synonyms`` is not given), in synonym order;
    3. the longest tag that ends the name or a synonym (the head noun of an English compound:
       ``"great white shark"`` -> ``"shark"``, never a modifier such as ``"white"``); ties go to the
       earlier phrase;
    4. the nearest WordNet hypernym with a lemma equal to a tag (``"tench"`` -> ``"fish"``), only
       when a WordNet 3.0 dict folder is given (``wordnet_dir`` or ``$WNSEARCHDIR``) and ``wnids`` are
       known (the standard ones by default for the 1000 classes).
    """
    from tagood.assets import imagenet_classes, imagenet_synonyms, imagenet_wnids

    index: dict[str, int] = {}
    for i, t in enumerate(tag_names):
        index.setdefault(_words(t), i)
    standard = list(class_names) == imagenet_classes()
    if synonyms is None and standard:
        synonyms = imagenet_synonyms()
    if wnids is None and standard:
        wnids = imagenet_wnids()
    env_dir = os.environ.get("WNSEARCHDIR")
    wn_dir = Path(wordnet_dir) if wordnet_dir is not None else (Path(env_dir) if env_dir else None)
    out: list[int] = []
    counts = {"exact": 0, "synonym": 0, "substring": 0, "hypernym": 0, "none": 0}
    for c, name in enumerate(class_names):
        syns = [_words(s) for s in (synonyms[c] if synonyms is not None else [])]
        n = _words(name)
        hit, how = index.get(n, -1), "exact"
        if hit < 0:
            how = "synonym"
            hit = next((index[s] for s in syns if s in index), -1)
        if hit < 0:
            how = "substring"
            # English compounds put the head noun last: only phrase endings count, the longest wins
            found = [g for p in [n] + syns for g in _endings(p) if g in index]
            hit = index[max(found, key=lambda g: (len(g.split()), len(g)))] if found else -1
        if hit < 0 and wn_dir is not None and wnids is not None:
            how = "hypernym"
            for lemmas in _wordnet_hypernym_names(wnids[c], wn_dir):
                hit = next((index[_words(lem)] for lem in lemmas if _words(lem) in index), -1)
                if hit >= 0:
                    break
        counts[how if hit >= 0 else "none"] += 1
        out.append(hit)
    log.info("RAM vocabulary by name matching for %d classes: %s", len(class_names), counts)
    return out
