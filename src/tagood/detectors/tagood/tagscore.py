"""Tag Score (TagOOD paper, Table 3): the tagger's confidence in the IND vocabulary alone.

``score(x) = -max_{t in V} p_t(x)``, with ``p_t(x)`` the tagger's probability of tag ``t`` for image ``x`` and ``V``
the IND vocabulary built from the IND training split (:mod:`tagood.detectors.tagood.tagbase`). **Higher = more
OOD**: an image none of whose IND tags the tagger believes in is OOD.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.detectors.registry import register
from tagood.detectors.tagood.inputs import tag_probs_of
from tagood.detectors.tagood.tagbase import TagDetector

__all__ = ["TagScore", "score"]


def score(tag_probs: ArrayLike, vocabulary_tags: ArrayLike) -> np.ndarray:
    """Tag Score of each image: minus its highest probability among the IND vocabulary's tags, **higher = more OOD**.

    Args:
        tag_probs: ``(N, T)`` the tagger's probability of each of its ``T`` tags.
        vocabulary_tags: the tag ids of the IND vocabulary (``det.vocab.tags``).
    Returns:
        ``(N,)`` float64 scores in ``[-1, 0]``.

    Example:
        >>> import numpy as np
        >>> score(np.array([[0.9, 0.2, 0.7], [0.1, 0.3, 0.0]]), [1, 2])
        array([-0.7, -0.3])
    """
    # the vocabulary's columns first, then float64 (exact): a chunk's (N, T) probabilities are never copied whole
    return -np.asarray(tag_probs)[:, np.asarray(vocabulary_tags)].astype(np.float64).max(axis=1)


@register("tagscore")
class TagScore(TagDetector):
    """Tag Score (TagOOD Table 3): ``-max_{t in V} p_t(x)`` over the IND vocabulary ``V`` (higher = more OOD).

    It learns the IND vocabulary from the training split (so it needs ``fit``, or a saved one). It scores no
    tokens, so ``no_tag`` and ``tau`` do not change its score; :meth:`token_masks` still gives the decomposition its
    vocabulary and ``tau`` imply. A loaded TagScore needs nothing from ``Context``: its tag rule (per-tag thresholds
    included) and vocabulary are saved. See :func:`score`.
    """

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.rule = self._rule_for(context)
        self.vocab = self._build_vocab(train, context)

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert self.vocab is not None
        return score(tag_probs_of(data, self.name), self.vocab.tags)
