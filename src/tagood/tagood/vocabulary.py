"""The IND vocabulary: which tagger tags stand for each IND class (TagOOD paper, section 3.3).

Built automatically as the most frequent kept tag among each class's training images (the paper
then has humans review it: the file written here is human-readable and can be edited and passed
back). Two classes whose most frequent tag is the same is a *collision*; it is reported.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


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
        return hashlib.sha256(repr(self.class_tags).encode()).hexdigest()[:12]

    def _tag(self, t: int) -> str:
        return self.tag_names[t] if self.tag_names and 0 <= t < len(self.tag_names) else str(t)

    def _cls(self, c: int) -> str:
        return self.class_names[c] if self.class_names and c < len(self.class_names) else str(c)

    def save(self, path: str | Path) -> Path:
        """Write a TSV: ``class  class_name  tag_id  tag_name  frequency`` (one line per (class, tag))."""
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
    def load(cls, path: str | Path, num_classes: int | None = None, tag_names: Sequence[str] | None = None) -> "Vocabulary":
        """Read a vocabulary TSV (as written by :meth:`save`, possibly hand-edited).

        A row may give ``tag_name`` only (``tag_id`` empty): it is looked up in ``tag_names``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file {path} not found")
        rows: dict[int, list[tuple[int, int]]] = {}
        names: dict[int, str] = {}
        index = {n: i for i, n in enumerate(tag_names or [])}
        with open(path, newline="") as f:
            for n, row in enumerate(csv.DictReader(f, delimiter="\t"), 2):
                try:
                    c = int(row["class"])
                    if row.get("tag_id", "").strip():
                        t = int(row["tag_id"])
                    else:
                        t = index[row["tag_name"].strip()]
                except (KeyError, ValueError, TypeError) as e:
                    raise ValueError(f"{path}:{n}: bad vocabulary row {dict(row)} ({e}); columns are class, class_name, tag_id, tag_name, frequency") from e
                fr = int(row["frequency"]) if (row.get("frequency") or "").strip() else 0
                rows.setdefault(c, []).append((t, fr))
                names[c] = row.get("class_name", str(c))
        k = num_classes if num_classes is not None else (max(rows) + 1 if rows else 0)
        missing = [c for c in range(k) if c not in rows]
        if missing:
            raise ValueError(f"{path}: no tag for classes {missing}")
        return cls([[t for t, _ in rows[c]] for c in range(k)], [[f for _, f in rows[c]] for c in range(k)],
                   [names[c] for c in range(k)], list(tag_names) if tag_names else None)


def build_vocabulary(kept: list[np.ndarray], labels: np.ndarray, num_classes: int, per_class: int = 1,
                     class_names: Sequence[str] | None = None, tag_names: Sequence[str] | None = None,
                     quiet: bool = False) -> Vocabulary:
    """The ``per_class`` most frequent kept tags of each class's training images.

    ``kept[i]``: tag ids kept for training image ``i`` (by the tag rule). A class none of whose
    images kept a tag is an error (lower the tag threshold or give a vocabulary file).
    """
    labels = np.asarray(labels)
    class_tags, freq = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        ts = np.concatenate([kept[i] for i in idx]) if len(idx) else np.zeros(0, np.int64)
        if len(ts) == 0:
            raise ValueError(f"IND class {c} ({class_names[c] if class_names else c}): none of its {len(idx)} training images kept a tag; "
                             "lower the tag threshold / raise top-k, or pass a vocabulary file")
        u, n = np.unique(ts, return_counts=True)
        order = np.lexsort((u, -n))[:per_class]  # most frequent first, ties by tag id
        class_tags.append([int(t) for t in u[order]])
        freq.append([int(x) for x in n[order]])
    v = Vocabulary(class_tags, freq, list(class_names) if class_names else None, list(tag_names) if tag_names else None)
    for t, cs in ({} if quiet else v.collisions).items():
        log.warning("IND vocabulary collision: tag '%s' stands for classes %s", v._tag(t), [v._cls(c) for c in cs])
    return v
