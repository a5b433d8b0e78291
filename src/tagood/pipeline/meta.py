"""The schema of a saved detector's ``tagood.json``: threshold, backbone record, no-tag rule, vocabulary, IND head.

``tagood fit`` writes it beside the detector's own files (:mod:`tagood.pipeline.detector_dir`); ``tagood score``
validates it before anything is loaded."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_core import PydanticCustomError

from tagood.core.validation import Fraction, NonNegInt, OpenFraction, SchemaError, _Strict, _type_word, format_errors


# -- saved detector (tagood.json) -------------------------------------------------------------------
def _threshold(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise PydanticCustomError("named_threshold", "'threshold' must be a finite number (got {got})", {"got": _type_word(v)
                                  if not isinstance(v, float) else ("NaN" if v != v else "infinity")})
    return v


class BackboneRecord(_Strict):
    name: str
    id: str
    weights_hash: str
    spec: dict[str, Any] | None = None


def _saved_method(v: Any) -> Any:
    """The saved ``method`` is a spec of a registered detector (not quoted back: it was read from a file)."""
    from tagood.detectors.registry import available, parse_name

    try:
        base, _ = parse_name(v) if isinstance(v, str) else ("", {})
    except ValueError:
        base = ""
    if base not in available():
        raise PydanticCustomError("named_method", "'method' must name a registered detector such as 'tagood' or "
                                  "'tagood[tau=0.25]' (got {got})",
                                  {"got": "another value" if isinstance(v, str) else _type_word(v)})
    return v


class SavedVocabulary(_Strict):
    """How a tag-based detector's IND vocabulary was chosen (``tagood fit``): the rule (``frequent`` /
    ``specific`` / ``file``), tags per class, and the IND-training no-tag fraction the cross-validation saw."""

    rule: Literal["frequent", "specific", "file"]
    tags_per_class: NonNegInt
    cv_no_tag_fraction: Fraction


class DetectorMeta(_Strict):
    """``tagood.json`` of a detector saved by ``tagood fit`` (:func:`tagood.pipeline.fitscore.fit_folder`).
    ``threshold`` is a finite OOD-score threshold (higher = more OOD: ``score > threshold`` is OOD)."""

    method: Annotated[str, BeforeValidator(_saved_method)]
    backbone: BackboneRecord
    dual_encoder: dict[str, Any] | None = None
    classes: list[str] = Field(min_length=1)
    threshold: Annotated[float, BeforeValidator(_threshold)]
    no_tag_rule: Literal["ood", "fallback"] | None = None
    target_tpr: OpenFraction | None = None
    heldout_tpr: Fraction | None = None
    heldout_no_tag_fraction: Fraction | None = None
    threshold_degenerate: bool | None = None
    warnings: list[str] | None = None
    n_train: NonNegInt | None = None
    n_heldout: NonNegInt | None = None
    streamed: list[str] | None = None
    failed_images: list[dict[str, Any]] | None = None
    vocabulary: SavedVocabulary | None = None
    #: the IND linear head's file beside the detector, when scoring goes through it (logit methods, ODIN)
    head: Literal["head.safetensors"] | None = None


def validate_detector_meta(data: Any, path: str | Path) -> DetectorMeta:
    """Validate the ``tagood.json`` read from ``path``; :class:`SchemaError` names the file and key, never
    its contents."""
    if not isinstance(data, Mapping):
        raise SchemaError(f"{path}: must hold a JSON object (got {_type_word(data)}); re-run `tagood fit` to save the "
                          "detector again")
    try:
        return DetectorMeta.model_validate(dict(data))
    except ValidationError as e:
        raise SchemaError(format_errors(e, data, str(path), "Re-run `tagood fit` to save the detector again")) from None
