"""The side information a detector may use at fit time (and keep for scoring), as typed fields."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tagood.core.featureset import FeatureSet
from tagood.core.types import DualEncoder, LinearHead


@dataclass
class Context:
    """Side information for :meth:`tagood.detectors.base.Detector.fit` (and :func:`tagood.detectors.base.load`); a
    detector names the fields it needs in ``context_requires``, and says how to build a missing one. Every field is
    optional.

    Attributes:
        head: the IND linear head (:func:`tagood.detectors.head.fit_head`); ReAct, ASH, ViM and LHAct recompute
            logits from edited features with it.
        model: a differentiable ``torch`` callable images -> IND logits (ODIN's input perturbation), e.g.
            :class:`tagood.detectors.head.Classifier`.
        pseudo_ood: a FeatureSet of pseudo-OOD images built from IND train (FeatureNorm's jigsaw).
        class_names: the IND class names (the vision-language methods build prompts from them).
        dual_encoder: the image/text encoder of the vision-language methods.
        device: the torch device of methods that train or run torch (``"cpu"``, ``"cuda"``, ...).
        seed: the seed of those methods.
        tag_names: the tagger's tag names (vocabulary reports); filled from the tagger by
            :func:`tagood.backbones.factory.tagger_context`, as are ``attend`` and ``tag_thresholds``, for
            TagOOD, CS and TagScore.
        attend: the tag-attention function ``attend(tokens (N,L,D), tag_ids (N,k)) -> (N,k,L)`` (``cam`` of the
            CAM tagger, ``attend`` of RAM), to recompute a ground-truth tag's attention from cached tokens.
        tag_thresholds: per-tag probability thresholds ``(T,)`` (RAM's ``ram_tag_list_threshold.txt``).
        work_dir: a folder under the feature cache where TagOOD keeps its temporary object-token store.
        crop_encoder: images ``(N,3,H,W)`` -> embeddings ``(N,E)`` for KR-NFT's crops, when they should not go
            through ``dual_encoder.encode_images``.
        shared: work that detectors fitted with this context share, by key (the TagOOD family's IND vocabularies,
            :mod:`tagood.detectors.tagood.memo`): fit the detectors of one training split with one context to
            share it.

    Example:
        >>> import numpy as np
        >>> import tagood
        >>> rng = np.random.default_rng(0)
        >>> train = tagood.FeatureSet(features=rng.normal(size=(60, 8)), labels=np.arange(60) % 3)
        >>> ctx = tagood.Context(head=tagood.fit_head(train))
        >>> det = tagood.create("react").fit(train, ctx)  # ReAct recomputes logits with the head
        >>> det.score(train).shape
        (60,)
    """

    head: LinearHead | None = None
    model: Callable[..., Any] | None = None
    pseudo_ood: FeatureSet | None = None
    class_names: list[str] | None = None
    dual_encoder: DualEncoder | None = None
    device: str = "cpu"
    seed: int = 0
    tag_names: Sequence[str] | None = None
    attend: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    tag_thresholds: np.ndarray | None = None
    work_dir: str | None = None
    crop_encoder: Callable[[np.ndarray], np.ndarray] | None = None
    shared: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
