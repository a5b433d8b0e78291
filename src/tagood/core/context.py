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
    """Side information for :meth:`tagood.detectors.base.Detector.fit`; a detector names the fields it needs
    in ``context_requires``.

    * ``head``: the IND linear head (ReAct, ASH, ViM, LHAct recompute logits from edited features).
    * ``model``: a differentiable ``torch`` callable images -> IND logits (ODIN input perturbation).
    * ``pseudo_ood``: a FeatureSet of pseudo-OOD images built from IND train (FeatureNorm's jigsaw).
    * ``class_names``: IND class names (VLM methods build prompts from them).
    * ``dual_encoder``: the image/text encoder of the vision-language methods.
    * ``device``: torch device string for methods that train or run torch; ``seed``: their seed.

    From the tagger (:func:`tagood.backbones.factory.tagger_context` fills them), for TagOOD, CS and TagScore:

    * ``tag_names``: the tagger's tag names (vocabulary reports);
    * ``attend``: the tag-attention function ``attend(tokens (N,L,D), tag_ids (N,k)) -> (N,k,L)`` (``cam`` of the
      CAM tagger, ``attend`` of RAM), to recompute a ground-truth tag's attention from cached tokens;
    * ``tag_thresholds``: per-tag probability thresholds (RAM's ``ram_tag_list_threshold.txt``), ``(T,)``;
    * ``work_dir``: a folder under the feature cache where TagOOD keeps its temporary object-token store.

    ``crop_encoder``: images ``(N,3,H,W)`` -> embeddings ``(N,E)`` for KR-NFT's crops when they should not go
    through ``dual_encoder.encode_images``.

    ``shared``: work that detectors fitted with this context share, by key (the TagOOD family's IND vocabularies,
    :mod:`tagood.detectors.tagood.memo`): fit the detectors of one training split with one context to share it.
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
