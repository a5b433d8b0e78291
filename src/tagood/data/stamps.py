"""Photographic object stamps from the Debian package ``tuxpaint-stamps-default`` (GPL-2 data).

The package installs about 800 PNG stamps with an alpha channel in category folders under
``/usr/share/tuxpaint/stamps`` (each with a ``.txt`` description, e.g. "A badger."). Many are
real-photo cut-outs, others clip art. The stamps are read at run time from the installed location
(``root`` argument, else the ``TAGOOD_STAMPS`` environment variable, else the Debian path) and
never copied into this repository.

Which stamps count as photographs is decided by a rule stated here and applied by
``scripts/make_stamp_list.py``, which writes the reviewed list ``tagood/assets/scene_stamps.tsv``:

1. **Folder rule:** leave out any path with a ``cartoon``, ``toys``, ``plastic`` or ``alphabets``
   folder, and the top-level folders in :data:`EXCLUDED_TOP` (symbols, road signs / town
   buildings, seasonal decorations, the Tux mascot, body parts, weather effects, planets).
2. **Image statistic:** the *flat fraction* (:func:`flat_fraction`), the share of the stamp's
   opaque interior pixels whose colour equals both their right and lower neighbours'. Clip art is
   filled with flat colours (flat fraction 0.4-1.0); photographs have sensor noise and shading, so
   almost no pixel equals its neighbours (0.0-0.26 among the photos of the package, palette PNGs
   included). Rule: ``flat_fraction < FLAT_MAX`` (0.3).
3. **Usable size:** at least :data:`MIN_PIXELS` opaque pixels (alpha >= 128), and at least
   :data:`MIN_SOLID` of the visible (alpha > 0) pixels opaque (stamps whose body is mostly
   half-transparent composite as ghosts).

The scenes benchmark (:mod:`tagood.data.scenes`) uses the ``group`` column (a coarse class such as
``bird``, ``mammal``, ``fruit``) as its class.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from tagood.data.source import DataSourceError, ImageDecodeError

log = logging.getLogger(__name__)

#: Where Debian's ``tuxpaint-stamps-default`` installs the stamps.
DEFAULT_STAMPS_ROOT = "/usr/share/tuxpaint/stamps"
#: Environment variable that overrides the stamps folder.
STAMPS_ENV = "TAGOOD_STAMPS"
#: Folder names that mark clip art anywhere in a stamp's path.
EXCLUDED_PARTS = frozenset({"cartoon", "toys", "plastic", "alphabets"})
#: Top-level folders left out whole: symbols and signs, buildings, holiday decorations (mostly clip
#: art), the Tux mascot, body parts / people, weather effects, sun / moon / planets.
EXCLUDED_TOP = frozenset({"symbols", "town", "seasonal", "cartoon", "people", "naturalforces", "space"})
#: Largest flat fraction a photographic stamp may have (see :func:`flat_fraction`).
FLAT_MAX = 0.3
#: Fewest opaque (alpha >= 128) pixels a usable stamp has.
MIN_PIXELS = 1000
#: Smallest share of visible (alpha > 0) pixels that are opaque (alpha >= 128).
MIN_SOLID = 0.5

#: Coarse group (the class of the scenes benchmark) of each stamp folder; the longest matching
#: folder prefix wins. Group names are singular nouns, so "a photo of a {group}" reads as English.
GROUPS: dict[str, str] = {
    "animals/birds": "bird",
    "animals/mammals": "mammal",
    "animals/marsupials": "mammal",
    "animals/fish": "fish",
    "animals/shellfish": "shellfish",
    "animals/insects": "insect",
    "animals/amphibians": "amphibian",
    "animals/lizards": "lizard",
    "food/fruit": "fruit",
    "food/vegetables": "vegetable",
    "food/nuts": "nut",
    "food/spices": "spice",
    "food": "food",
    "plants/flowers": "flower",
    "plants/mushrooms": "mushroom",
    "plants/trees": "tree",
    "plants": "plant",
    "household/tools": "tool",
    "household/dishes": "kitchenware",
    "household/arttools": "art supply",
    "household": "household item",
    "hobbies/music": "musical instrument",
    "hobbies": "hobby item",
    "clothes/hats": "hat",
    "clothes": "clothing",
    "vehicles": "vehicle",
    "military/vehicles": "vehicle",
    "military": "military item",
    "medical": "medical item",
    "sports": "sports equipment",
}


@dataclass(frozen=True)
class Stamp:
    """One row of the stamp list: ``path`` relative to the stamps root, its folder ``category``,
    coarse ``group``, the rule's statistic ``flat``, opaque pixel count, the ImageNet
    EfficientNet-Lite0 top-1 class and probability on a plain grey background, and the caption."""

    path: str
    category: str
    group: str
    flat: float
    pixels: int
    lite0_top1: str
    lite0_prob: float
    caption: str


def stamps_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The stamps folder: ``root``, else ``$TAGOOD_STAMPS``, else the Debian location.

    Raises :class:`DataSourceError` naming the folder and the package to install when it is missing."""
    chosen = root if root is not None else os.environ.get(STAMPS_ENV) or DEFAULT_STAMPS_ROOT
    p = Path(chosen).expanduser()
    if not p.is_dir():
        raise DataSourceError(
            f"Tux Paint stamps folder {p} not found: install the Debian package with "
            f"`sudo apt-get install tuxpaint-stamps-default` (or point ${STAMPS_ENV} at a copy of its stamps folder)")
    return p


def group_of(rel_path: str) -> str:
    """The coarse group of a stamp path (longest folder prefix in :data:`GROUPS`), ``"other"`` if none."""
    folder = str(Path(rel_path).parent)
    parts = folder.split("/")
    for k in range(len(parts), 0, -1):
        g = GROUPS.get("/".join(parts[:k]))
        if g is not None:
            return g
    return "other"


def folder_allowed(rel_path: str) -> bool:
    """The folder half of the photographic rule (see the module docstring)."""
    parts = Path(rel_path).parts[:-1]
    if not parts or parts[0] in EXCLUDED_TOP:
        return False
    return not any(p in EXCLUDED_PARTS for p in parts)


def flat_fraction(rgba: np.ndarray) -> float:
    """Share of opaque interior pixels whose RGB equals that of both the right and the lower neighbour.

    ``rgba``: (H, W, 4) uint8. Interior = the pixel and both neighbours have alpha >= 128. Clip art
    (flat fills) scores high, photographs (noise, shading) near 0. Returns 1.0 for an empty mask."""
    a = np.asarray(rgba)
    if a.ndim != 3 or a.shape[2] != 4:
        raise ValueError(f"flat_fraction needs an (H, W, 4) array, got shape {a.shape}")
    opaque = a[..., 3] >= 128
    inner = opaque[:-1, :-1] & opaque[1:, :-1] & opaque[:-1, 1:]
    n = int(inner.sum())
    if n == 0:
        return 1.0
    c = a[..., :3]
    same = np.all(c[:-1, :-1] == c[1:, :-1], axis=-1) & np.all(c[:-1, :-1] == c[:-1, 1:], axis=-1)
    return float((same & inner).sum() / n)


def mask_stats(rgba: np.ndarray) -> tuple[int, float]:
    """``(opaque pixel count, opaque share of visible pixels)`` of an (H, W, 4) uint8 stamp."""
    alpha = np.asarray(rgba)[..., 3]
    opaque = int((alpha >= 128).sum())
    visible = int((alpha > 0).sum())
    return opaque, (opaque / visible if visible else 0.0)


def load_stamp(root: Path, rel_path: str) -> np.ndarray:
    """Stamp ``rel_path`` under ``root`` as an (H, W, 4) uint8 RGBA array, cropped to its visible pixels."""
    p = root / rel_path
    try:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGBA"))
    except FileNotFoundError as e:
        raise ImageDecodeError(str(p), "stamp file missing; is `tuxpaint-stamps-default` the version the stamp list "
                                       "was made from? (re-run scripts/make_stamp_list.py)") from e
    except OSError as e:
        raise ImageDecodeError(str(p), str(e)) from e
    rows = np.flatnonzero(a[..., 3].any(axis=1))
    cols = np.flatnonzero(a[..., 3].any(axis=0))
    if len(rows) == 0:
        raise ImageDecodeError(str(p), "stamp is fully transparent")
    return np.ascontiguousarray(a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])


def caption(root: Path, rel_path: str) -> str:
    """The English description of a stamp (first line of its ``.txt`` file), or '' if it has none."""
    t = (root / rel_path).with_suffix(".txt")
    if not t.exists():
        return ""
    for line in t.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and "=" not in line.split(" ")[0]:
            return line
    return ""


def candidate_paths(root: Path) -> list[str]:
    """All stamp PNGs under ``root`` (relative paths, sorted) that pass the folder rule."""
    out = [str(p.relative_to(root)) for p in root.rglob("*.png")]
    return sorted(r for r in out if folder_allowed(r))


STAMP_LIST_COLUMNS = ("path", "category", "group", "flat", "pixels", "lite0_top1", "lite0_prob", "caption")


def _asset_path() -> Path:
    return Path(str(resources.files("tagood.assets").joinpath("scene_stamps.tsv")))


@lru_cache(maxsize=4)
def read_stamp_list(path: str | None = None) -> tuple[Stamp, ...]:
    """The reviewed photographic stamp list (default: the packaged ``scene_stamps.tsv``); ``#`` lines are comments."""
    p = Path(path) if path is not None else _asset_path()
    if not p.exists():
        raise DataSourceError(f"stamp list {p} not found; generate it with `python scripts/make_stamp_list.py`")
    lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    if tuple(reader.fieldnames or ()) != STAMP_LIST_COLUMNS:
        raise DataSourceError(f"stamp list {p}: columns {reader.fieldnames}, expected {list(STAMP_LIST_COLUMNS)}")
    return tuple(Stamp(r["path"], r["category"], r["group"], float(r["flat"]), int(r["pixels"]), r["lite0_top1"],
                       float(r["lite0_prob"]), r["caption"]) for r in reader)


def stamp_list_hash(path: str | None = None) -> str:
    """sha256 (16 hex digits) of the stamp list file; part of the scenes' cache identity."""
    p = Path(path) if path is not None else _asset_path()
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
