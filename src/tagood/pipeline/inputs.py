"""What a detector reads from an image folder, and how ``tagood fit`` / ``tagood score`` give it that, the way
``tagood bench`` does (:mod:`tagood.bench.runner`): the backbone fields to extract, the IND linear head and its
logits, the preprocessed images (ODIN), jigsaw pseudo-OOD images (FeatureNorm), a dual encoder's image embeddings
(the vision-language methods) and the tagger's context (the tag-based methods). Scores: higher = more OOD.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagood.backbones.factory import PATH_KEYS
from tagood.core.featureset import FeatureSet
from tagood.data import ImageSource
from tagood.errors import ConfigError
from tagood.extract import extract_split

log = logging.getLogger(__name__)

#: fields a backbone extracts (the others -- logits, images, embeddings -- are derived from them)
BACKBONE_FIELDS = ("features", "tokens", "tag_probs", "tag_attention", "block_norms")
#: fields a dual encoder adds (:meth:`attach`)
DUAL_FIELDS = ("image_embeds", "patch_embeds")


@dataclass(frozen=True)
class Needs:
    """What one detector needs from a folder (:func:`needs`)."""

    #: backbone fields to extract from the folder (pooled ``features`` always: the head, the dual encoder)
    fields: tuple[str, ...]
    #: fit the IND linear head on the training features (as ``tagood bench`` does)
    head: bool
    #: the head is needed again at scoring (logits or ODIN's model): saved beside the detector
    keep_head: bool
    #: IND-head logits of the training split / of the scored images
    fit_logits: bool
    score_logits: bool
    #: the preprocessed images (ODIN's input perturbation)
    images: bool
    #: backbone fields of jigsaw pseudo-OOD images (FeatureNorm's block choice); empty when not needed
    pseudo_fields: tuple[str, ...]
    #: a vision-language detector: image embeddings from a dual encoder, its few-shot picks only at fit
    dual: bool


def needs(det: Any) -> Needs:
    """What ``det`` reads (its ``requires``, ``fit_requires`` and ``context_requires``), as a :class:`Needs`."""
    score_req = set(det.requires)
    fit_req = set(det.fit_requires) if det.fit_requires is not None else score_req
    ctx = set(det.context_requires)
    reads = score_req | fit_req
    dual = bool(reads & set(DUAL_FIELDS))
    fields = {"features"} | (reads & set(BACKBONE_FIELDS))
    if "patch_embeds" in reads:
        fields.add("tokens")  # the offline dual encoder derives patch embeddings from the tokens
    images = "images" in reads
    head = bool("logits" in reads or ctx & {"head", "model"} or images)
    pseudo = tuple(sorted(score_req & set(BACKBONE_FIELDS))) if "pseudo_ood" in ctx else ()
    return Needs(fields=tuple(sorted(fields)), head=head, keep_head="logits" in score_req or "model" in ctx or images,
                 fit_logits="logits" in fit_req, score_logits="logits" in score_req, images=images,
                 pseudo_fields=pseudo, dual=dual)


def backbone_spec(backbone: str | Mapping[str, Any]) -> dict[str, Any]:
    """A backbone name (``"efficientnet-lite0"``) or spec (``{"name": "ram", "checkpoint": ...}``, see
    :func:`tagood.backbones.factory.build_backbone`) with its file paths made absolute, as saved in ``tagood.json``."""
    spec = {"name": backbone} if isinstance(backbone, str) else dict(backbone)
    spec.setdefault("name", "efficientnet-lite0")
    for k in PATH_KEYS:
        if isinstance(spec.get(k), (str, Path)):
            spec[k] = str(Path(spec[k]).expanduser().resolve())
    return spec


def vlm_specs(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(extraction backbone, dual encoder) of a vision-language detector: CLIP from ``spec["path"]`` when the
    backbone named is ``clip``, else the built-in offline encoder on EfficientNet-Lite0."""
    if spec["name"] == "clip":
        if "path" not in spec:
            raise ConfigError("a vision-language detector with --backbone clip needs --clip DIR (a CLIP directory)")
        return {"name": "clip", "path": spec["path"]}, {"name": "clip", "path": spec["path"]}
    if spec["name"] != "efficientnet-lite0":
        raise ConfigError(f"vision-language detectors need a dual encoder: CLIP (--backbone clip --clip DIR) or the "
                          f"built-in offline one (--backbone efficientnet-lite0), not {spec['name']}")
    return {"name": "efficientnet-lite0"}, {"name": "offline"}


def check_outputs(method: str, need: Needs, bb: Any) -> None:
    """Raise a :class:`tagood.errors.ConfigError` before any extraction when the backbone cannot give a field."""
    missing = sorted((set(need.fields) | set(need.pseudo_fields)) - set(bb.outputs))
    if missing:
        raise ConfigError(f"{method} needs {missing}, which the backbone {bb.id} does not extract (it gives "
                          f"{sorted(bb.outputs)}); pick another --backbone for it")


def pseudo_ood(fit_src: ImageSource, bb: Any, cache: str | Path | None, fields: tuple[str, ...], seed: int) -> FeatureSet:
    """The jigsaw pseudo-OOD images of the IND training images, as ``tagood bench``'s default ``[pseudo_ood]``
    builds them (:class:`tagood.bench.schema.PseudoOOD`), extracted with ``fields``."""
    from tagood.bench.schema import PseudoOOD

    src = PseudoOOD(of="train").source(fit_src, seed)
    reader = extract_split(src, bb, cache, split="fit-pseudo-ood", fields=list(fields))
    return reader.to_featureset(list(fields), name="pseudo-ood")


def dual_encoder(spec: Mapping[str, Any], bb: Any, device: str) -> Any:
    """The dual encoder of a vision-language detector (:func:`tagood.backbones.factory.build_dual_encoder`)."""
    from tagood.backbones.factory import build_dual_encoder

    return build_dual_encoder(dict(spec), bb, device=device)
