"""The inputs the tag-based detectors read from a :class:`tagood.core.featureset.FeatureSet`, each checked present.

A FeatureSet's fields are optional. ``Detector.fit`` / ``Detector.score`` check the fields a detector ``requires``
before calling it, but the decomposition methods (``token_masks``, ``kept_tag_ids``, ``decompose``, ...) take a
FeatureSet directly; each accessor here returns the field with its type, or raises
:class:`tagood.errors.InputError` naming the field and what to pass.
"""

from __future__ import annotations

import numpy as np

from tagood.core.featureset import FeatureSet
from tagood.core.types import TagAttention, TokenSet
from tagood.detectors.base import INPUT_HINTS
from tagood.errors import InputError

__all__ = ["labels_of", "tag_attention_of", "tag_probs_of", "tokens_of"]


def _missing(data: FeatureSet, name: str, who: str) -> InputError:
    return InputError(f"{who}: the feature set '{data.name}' has no {name}; pass a tagood.FeatureSet with {name}=... "
                      f"({INPUT_HINTS.get(name, name)})")


def tokens_of(data: FeatureSet, who: str) -> TokenSet:
    """``data.tokens``, each image's (undecomposed) token set.

    Args:
        data: an in-memory chunk.
        who: the detector asking, named in the error.
    Returns:
        The token set.
    Raises:
        tagood.errors.InputError: ``data`` has no tokens.
    """
    if data.tokens is None:
        raise _missing(data, "tokens", who)
    return data.tokens


def tag_attention_of(data: FeatureSet, who: str) -> TagAttention:
    """``data.tag_attention``, each image's stored tag ids and their attention maps over its tokens.

    Args:
        data: an in-memory chunk.
        who: the detector asking, named in the error.
    Returns:
        The tag attention.
    Raises:
        tagood.errors.InputError: ``data`` has no tag_attention.
    """
    if data.tag_attention is None:
        raise _missing(data, "tag_attention", who)
    return data.tag_attention


def tag_probs_of(data: FeatureSet, who: str) -> np.ndarray:
    """``data.tag_probs``, the tagger's ``(N, T)`` probability of each tag.

    Args:
        data: an in-memory chunk.
        who: the detector asking, named in the error.
    Returns:
        The tag probabilities, as stored.
    Raises:
        tagood.errors.InputError: ``data`` has no tag_probs.
    """
    if data.tag_probs is None:
        raise _missing(data, "tag_probs", who)
    return data.tag_probs


def labels_of(data: FeatureSet, who: str) -> np.ndarray:
    """``data.labels``, the IND class id of each training sample.

    Args:
        data: the IND training split (or a chunk of it).
        who: the detector asking, named in the error.
    Returns:
        The labels, as stored.
    Raises:
        tagood.errors.InputError: ``data`` has no labels.
    """
    if data.labels is None:
        raise _missing(data, "labels", who)
    return data.labels
