"""The IND vocabulary: which tagger tags stand for each IND class (TagOOD paper, section 3.3).

Two rules build it from the tags kept on IND training images:

* ``frequent`` (the paper): the most frequent kept tags among each class's training images (the paper
  then has humans review them: the file written here is human-readable and can be edited and passed
  back).
* ``specific``: tags frequent in this class and rare in the others. With ``P(t|c)`` the fraction of
  class ``c``'s training images that kept tag ``t``, the specificity is
  ``s(t, c) = P(t|c) - mean_{c' != c} P(t|c')``; tags with ``s > 0`` are ranked by ``s`` (a class whose
  tags all have ``s <= 0`` keeps its single best one). A tag that fires for every class as often as
  for this one (a background tag: sky, wall, the shared scene) has ``s ~ 0`` and is dropped, where the
  paper's rule picks it whenever it is the most frequent. The other IND classes' training images are
  the background evidence we have: there are no background-only images at fit time.

Two classes sharing a tag is a *collision*; it is reported. :func:`vocabulary_fit` measures a
vocabulary on held-out IND images (coverage and how well the kept tags name the image's own class).
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tagood.detectors.tagood.kept import flat
from tagood.errors import ConfigError

__all__ = ["VOCAB_RULES", "Vocabulary", "VocabularyError", "build_vocabulary", "file_classes", "rank_tags", "vocabulary_fit"]

log = logging.getLogger(__name__)

#: the columns of a vocabulary file, for messages
_COLUMNS = "columns (tab-separated, with a header row): class, class_name, tag_id, tag_name, frequency"


class VocabularyError(ConfigError):
    """The IND vocabulary cannot be read from its file or built from the training split; the message names the
    file (never quoting it) or the class, and says what to change."""


@dataclass
class Vocabulary:
    """``class_tags[c]``: tag ids standing for IND class ``c`` (most frequent first); ``freq[c]`` their counts."""

    class_tags: list[list[int]]
    freq: list[list[int]] = field(default_factory=list)
    class_names: list[str] | None = None
    tag_names: list[str] | None = None

    @property
    def tags(self) -> np.ndarray:
        """All IND tag ids (sorted, unique)."""
        return np.unique(np.array([t for ts in self.class_tags for t in ts], dtype=np.int64))

    @property
    def collisions(self) -> dict[int, list[int]]:
        """tag id -> the classes sharing it (only tags used by two or more classes)."""
        owners: dict[int, list[int]] = {}
        for c, ts in enumerate(self.class_tags):
            for t in ts:
                owners.setdefault(t, []).append(c)
        return {t: cs for t, cs in owners.items() if len(cs) > 1}

    def digest(self) -> str:
        """A short hash of the class tags."""
        return hashlib.sha256(repr(self.class_tags).encode()).hexdigest()[:12]

    def _tag(self, t: int) -> str:
        return self.tag_names[t] if self.tag_names and 0 <= t < len(self.tag_names) else str(t)

    def _cls(self, c: int) -> str:
        return self.class_names[c] if self.class_names and c < len(self.class_names) else str(c)

    def save(self, path: str | Path) -> Path:
        """Write a TSV: ``class  class_name  tag_id  tag_name  frequency`` (one line per (class, tag)).

        Args:
            path: the file (its folder is created).
        Returns:
            The path.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["class", "class_name", "tag_id", "tag_name", "frequency"])
            for c, ts in enumerate(self.class_tags):
                for j, t in enumerate(ts):
                    n = self.freq[c][j] if self.freq and j < len(self.freq[c]) else ""
                    w.writerow([c, self._cls(c), t, self._tag(t), n])
        return path

    @classmethod
    def load(cls, path: str | Path, num_classes: int | None = None, tag_names: Sequence[str] | None = None) -> Vocabulary:
        """Read a vocabulary TSV (as written by :meth:`save`, possibly hand-edited).

        A row may give ``tag_name`` only (``tag_id`` empty): it is looked up in ``tag_names``.

        Args:
            path: the file.
            num_classes: the number of IND classes (default: the highest class id + 1); each needs a row.
            tag_names: the tagger's tag names.
        Returns:
            The vocabulary.
        Raises:
            VocabularyError: the file is missing or unreadable, a row is malformed, or a class has no tag; the
                message names the file, the row and the column, never quoting the file.
        """
        path = Path(path)
        rows: dict[int, list[tuple[int, int]]] = {}
        names: dict[int, str] = {}
        index = {n: i for i, n in enumerate(tag_names or [])}
        cols = _COLUMNS
        # errors name the row and the column, never quote the file (it may be any file given by mistake)
        for n, row in enumerate(_rows(path), 2):
            col = "class"
            try:
                c = int(row["class"])
                col = "tag_id"
                tag_id = (row.get("tag_id") or "").strip()
                t = int(tag_id) if tag_id else index.get((row.get("tag_name") or "").strip(), -1)
                col = "frequency"
                fr = int(row["frequency"]) if (row.get("frequency") or "").strip() else 0
            except (TypeError, ValueError):
                raise VocabularyError(f"vocabulary file {path}, row {n}: column {col} is not an integer; {cols}") from None
            if tag_id and t < 0:
                raise VocabularyError(f"vocabulary file {path}, row {n}: column tag_id must be >= 0; {cols}")
            if t < 0:
                raise VocabularyError(f"vocabulary file {path}, row {n}: no tag_id, and column tag_name names no tag of the "
                                 "tagger's tag list; give tag_id or a tag_name from the tag list")
            rows.setdefault(c, []).append((t, fr))
            names[c] = row.get("class_name") or str(c)
        k = num_classes if num_classes is not None else (max(rows) + 1 if rows else 0)
        missing = [c for c in range(k) if c not in rows]
        if missing:
            raise VocabularyError(f"vocabulary file {path}: no tag for IND classes {missing}; give one row per (class, tag) "
                                  f"for each of the {k} classes")
        return cls([[t for t, _ in rows[c]] for c in range(k)], [[f for _, f in rows[c]] for c in range(k)],
                   [names[c] for c in range(k)], list(tag_names) if tag_names else None)


def _rows(path: Path) -> list[dict[str, str]]:
    """The rows of a vocabulary file; :class:`VocabularyError` when it is missing, not UTF-8 text or has no
    ``class`` column."""
    if not path.is_file():
        raise VocabularyError(f"vocabulary file {path} not found; pass a file written by a run (vocabulary-<method>.tsv) "
                              f"or by Vocabulary.save")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except UnicodeDecodeError:
        raise VocabularyError(f"vocabulary file {path} is not UTF-8 text; {_COLUMNS}") from None
    except OSError as e:
        raise VocabularyError(f"vocabulary file {path} cannot be read ({e.strerror})") from None
    if rows and "class" not in rows[0]:
        raise VocabularyError(f"vocabulary file {path}: no column 'class' in the header row; {_COLUMNS}")
    return rows


def file_classes(path: str | Path) -> set[int]:
    """The IND class ids a vocabulary file gives tags to (a check before any extraction).

    Args:
        path: the file (as :meth:`Vocabulary.save` writes it).
    Returns:
        The class ids of its rows.
    Raises:
        VocabularyError: the file is missing, unreadable or a row's ``class`` is not an integer.
    """
    path = Path(path)
    out: set[int] = set()
    for n, row in enumerate(_rows(path), 2):
        try:
            out.add(int(row["class"]))
        except (TypeError, ValueError):
            raise VocabularyError(f"vocabulary file {path}, row {n}: column class is not an integer; {_COLUMNS}") from None
    return out


VOCAB_RULES = ("frequent", "specific")


def _flatten(kept: Sequence[np.ndarray], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image index, label, tag id) of every distinct kept (image, tag) pair."""
    lens, tags = flat(kept)
    img = np.repeat(np.arange(len(kept), dtype=np.int64), lens)
    if len(tags):  # one vectorised de-duplication of (image, tag) pairs
        width = int(tags.max()) + 1
        key = np.unique(img * width + tags)
        img, tags = key // width, key % width
    return img, np.asarray(labels, dtype=np.int64)[img], tags


def rank_tags(kept: Sequence[np.ndarray], labels: np.ndarray, num_classes: int, rule: str = "frequent",
              class_names: Sequence[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each class's tags in the order of a rule (module docstring); ties are broken by count, then tag id.

    Args:
        kept: the tag ids the tag rule keeps on each training image.
        labels: the images' IND class ids.
        num_classes: the number of IND classes.
        rule: ``frequent`` or ``specific``.
        class_names: IND class names (messages).
    Returns:
        Per class: ``(tag ids in rule order, their image counts in the class)``.
    Raises:
        VocabularyError: a class none of whose images kept a tag (lower the tag threshold or give a vocabulary
            file), or an unknown rule.
    """
    if rule not in VOCAB_RULES:
        raise VocabularyError(f"vocabulary rule must be one of {VOCAB_RULES}, got {rule!r}")
    labels = np.asarray(labels, dtype=np.int64)
    _, y, t = _flatten(kept, labels)
    n_img = np.bincount(labels, minlength=num_classes).astype(np.float64)
    n_tags = int(t.max()) + 1 if len(t) else 0
    key, count = np.unique(y * max(n_tags, 1) + t, return_counts=True)
    kc, kt = key // max(n_tags, 1), key % max(n_tags, 1)
    total_p = np.zeros(n_tags)
    np.add.at(total_p, kt, count / np.maximum(n_img[kc], 1.0))  # sum over classes of P(t|c)
    out = []
    for c in range(num_classes):
        sel = kc == c
        u, n = kt[sel], count[sel]
        if len(u) == 0:
            name = class_names[c] if class_names else c
            raise VocabularyError(f"IND class {c} ({name}): none of its {int(n_img[c])} training images kept a tag; "
                             "lower the tag threshold / raise top-k, or pass a vocabulary file")
        if rule == "frequent" or num_classes == 1:
            order = np.lexsort((u, -n))  # most frequent first, ties by tag id
        else:
            p = n / n_img[c]
            spec = p - (total_p[u] - p) / (num_classes - 1)
            order = np.lexsort((u, -n, -spec))
            positive = spec[order] > 1e-9  # > 0 up to float rounding: a tag equally frequent everywhere scores 0
            order = order[positive] if positive.any() else order[:1]
        out.append((u[order], n[order]))
    return out


def build_vocabulary(kept: Sequence[np.ndarray], labels: np.ndarray, num_classes: int, per_class: int = 1,
                     class_names: Sequence[str] | None = None, tag_names: Sequence[str] | None = None,
                     quiet: bool = False, rule: str = "frequent") -> Vocabulary:
    """The IND vocabulary: the first ``per_class`` tags of each class by ``rule`` -- ``frequent`` (the paper: the
    most frequent kept tags of the class's training images) or ``specific`` (frequent in this class, rare in the
    others; module docstring). Collisions (a tag standing for several classes) are logged unless ``quiet``.

    Args:
        kept: ``kept[i]``, the tag ids the tag rule keeps on training image ``i``.
        labels: the images' IND class ids.
        num_classes: the number of IND classes.
        per_class: tags per class.
        class_names: IND class names; ``tag_names``: the tagger's tag names (reports and the file).
        quiet: do not log collisions.
        rule: ``frequent`` or ``specific``.
    Returns:
        The vocabulary.
    Raises:
        VocabularyError: a class none of whose images kept a tag (lower the tag threshold or give a vocabulary file).
    """
    ranked = rank_tags(kept, labels, num_classes, rule, class_names)
    class_tags = [[int(t) for t in u[:per_class]] for u, _ in ranked]
    freq = [[int(x) for x in n[:per_class]] for _, n in ranked]
    v = Vocabulary(class_tags, freq, list(class_names) if class_names else None, list(tag_names) if tag_names else None)
    for t, cs in ({} if quiet else v.collisions).items():
        log.warning("IND vocabulary collision: tag '%s' stands for classes %s", v._tag(t), [v._cls(c) for c in cs])
    return v


def vocabulary_fit(vocab: Vocabulary, kept: Sequence[np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """How well ``vocab`` serves IND images it was not built from (held-out IND training images):

    * ``coverage``: fraction of the images that keep at least one vocabulary tag (the others are
      "no-tag" images);
    * ``precision``: over the covered images, the mean share of their kept vocabulary tags that name
      their own class, a tag shared by ``k`` classes counting ``1/k`` (a background tag in every class's
      list counts ``1/C``: it covers but does not separate the classes);
    * ``separation`` = coverage x precision: the criterion that chooses a vocabulary rule (a vocabulary
      that covers every image with one shared background tag scores ``1/C``);
    * ``n``: the number of images measured.

    Args:
        vocab: the vocabulary.
        kept: the tag ids the tag rule keeps on each image measured.
        labels: their IND class ids.
    Returns:
        ``{"coverage", "precision", "separation", "n"}`` (NaN for no image).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return {"coverage": float("nan"), "precision": float("nan"), "separation": float("nan"), "n": 0}
    c = len(vocab.class_tags)
    all_kept = flat(kept)[1]
    top_kept = int(all_kept.max()) if len(all_kept) else 0
    n_tags = max([max(ts) for ts in vocab.class_tags if ts] + [top_kept]) + 1
    owners = np.zeros((c, n_tags), bool)
    for k, ts in enumerate(vocab.class_tags):
        owners[k, ts] = True
    n_owners = owners.sum(axis=0)
    img, y, t = _flatten(kept, labels)
    inv = n_owners[t] > 0
    img, y, t = img[inv], y[inv], t[inv]
    n_kept = np.bincount(img, minlength=len(labels))
    own = np.bincount(img, weights=owners[y, t] / np.maximum(n_owners[t], 1), minlength=len(labels))
    covered = n_kept > 0
    coverage = float(covered.mean())
    precision = float((own[covered] / n_kept[covered]).mean()) if covered.any() else 0.0
    return {"coverage": coverage, "precision": precision, "separation": coverage * precision, "n": len(labels)}
