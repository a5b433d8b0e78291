"""The IND vocabularies already built in a run, shared by the tag-based detectors fitted with one ``Context``.

TagScore, CS, (CE)+CS and TagOOD of one ``tagood bench`` run build the same IND vocabulary from the same training
split (the cross-validated choice of :mod:`tagood.detectors.tagood.selection` is the costly part): the first builds
and logs it, the others reuse a copy and log nothing new. The memo is held by the ``Context`` the detectors are
fitted with (``context.shared``), so sharing is explicit -- fit several detectors with one ``Context`` to share --
and it lives as long as that ``Context``; an entry also lives no longer than its training split (a weak reference).
A reused vocabulary is the one a fresh build gives: the key holds every input of the build.
"""

from __future__ import annotations

import copy
import hashlib
import weakref
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.detectors.tagood.kept import flat
from tagood.detectors.tagood.vocabulary import Vocabulary

__all__ = ["BuiltVocabulary", "VocabularyMemo", "kept_digest"]

#: the key of the memo in ``Context.shared``
SHARED_KEY = "tagood.vocabularies"


@dataclass(frozen=True)
class BuiltVocabulary:
    """A vocabulary as built from a training split, with how it was chosen."""

    vocab: Vocabulary
    #: the rule it was built with (``frequent``, ``specific`` or ``file``)
    rule: str
    #: tags per class it was built with
    per_class: int
    #: its held-out fit (:func:`tagood.detectors.tagood.selection.pool_fits`)
    fit: dict[str, float]


class VocabularyMemo:
    """Built vocabularies by training split (its identity, held weakly) and by the inputs of the build (a key)."""

    def __init__(self) -> None:
        self._splits: dict[int, tuple[weakref.ref[FeatureSet], dict[Hashable, BuiltVocabulary]]] = {}

    @classmethod
    def of(cls, context: Context) -> VocabularyMemo:
        """The memo ``context`` holds (created on first use).

        Args:
            context: the context detectors are fitted with.
        Returns:
            Its memo.
        """
        memo = context.shared.get(SHARED_KEY)
        if not isinstance(memo, cls):
            memo = context.shared[SHARED_KEY] = cls()
        return memo

    def _entries(self, train: FeatureSet) -> dict[Hashable, BuiltVocabulary]:
        entry = self._splits.get(id(train))
        if entry is None or entry[0]() is not train:
            for k in [k for k, (ref, _) in self._splits.items() if ref() is None]:
                del self._splits[k]
            entry = (weakref.ref(train), {})
            self._splits[id(train)] = entry
        return entry[1]

    def get(self, train: FeatureSet, key: Hashable) -> BuiltVocabulary | None:
        """A copy of the vocabulary built from ``train`` with ``key``, or ``None`` when none was.

        Args:
            train: the training split.
            key: every input of the build (options, seed, names, :func:`kept_digest`).
        Returns:
            The entry (its vocabulary a deep copy the caller may change), or ``None``.
        """
        hit = self._entries(train).get(key)
        return None if hit is None else copy.deepcopy(hit)

    def put(self, train: FeatureSet, key: Hashable, built: BuiltVocabulary) -> None:
        """Remember a copy of ``built`` for ``train`` and ``key``.

        Args:
            train: the training split.
            key: every input of the build.
            built: the vocabulary and how it was chosen.
        """
        self._entries(train)[key] = copy.deepcopy(built)


def kept_digest(kept: Sequence[np.ndarray], labels: np.ndarray) -> str:
    """Content hash of the kept tag ids per training image and of the labels (part of a memo key).

    Args:
        kept: the tag ids kept on each training image.
        labels: the images' IND class ids.
    Returns:
        A hex digest.
    """
    h = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    lens, ids = flat(kept)  # the ids concatenated: the same bytes as hashing each image's in turn
    h.update(lens.tobytes())
    h.update(ids.tobytes())
    return h.hexdigest()
