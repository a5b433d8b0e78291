"""Fit a detector on a labelled image folder, save it, and score new images with it (``tagood fit`` / ``tagood score``).

The saved directory holds the detector (safetensors + JSON, no pickle) and ``tagood.json``: the
backbone it was fitted on and a decision threshold from a held-out 10% of the IND training images
(scores are higher = more OOD). The decision rule (:func:`decision_threshold`, :func:`is_ood`):

* ``is_ood = score > threshold``, **or** the image has no kept IND tag and the method's no-tag rule is
  ``ood`` (TagOOD paper section 3.5: such an image is OOD; it scores ``NO_TAG_SCORE``).
* ``threshold`` is the smallest held-out score that accepts at least 95% of the held-out images,
  counting the no-tag ones (rule ``ood``) as rejected. When more than 5% of them have no tag, 95% cannot
  be reached: the threshold then accepts every tagged held-out image, the true-positive rate actually
  reached is saved (``heldout_tpr``) and a warning says the threshold is degenerate.
* Under torchrun (``torchrun --nproc-per-node N -m tagood fit|score ...``, :mod:`tagood.runtime.distributed`) each rank
  extracts its part of the folder into the shared cache, TagOOD's projector trains with DDP, scoring is split
  across the ranks and gathered in order, and only rank 0 writes the detector directory / the CSV.
* A NaN score is never "in-distribution": fitting or scoring stops with an error naming the method,
  how many scores are NaN and, where it can tell, the cause.
"""

from __future__ import annotations

from tagood.errors import CheckpointError
import csv
import io
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tagood import detectors

from tagood.runtime import distributed
from tagood.backbones.factory import PATH_KEYS, build_backbone, tagger_context
from tagood.cache import STREAM_ABOVE_GB, heavy_fields
from tagood.data import FilesSource, FolderSource, ImageSource
from tagood.extract import extract_split
from tagood.runtime.fileio import atomic_write_text
from tagood.detectors.tagood.scores import NO_TAG_SCORE
from tagood.core.context import Context

log = logging.getLogger(__name__)

#: vision-language detectors `tagood fit` saves (scored from dual-encoder image embeddings)
VLM_SAVEABLE = ("krnft",)
#: tag-based detectors `tagood fit` saves (they have a no-tag rule)
TAG_SAVEABLE = ("tagood", "cs", "ce+cs")
SAVEABLE = (*TAG_SAVEABLE, *VLM_SAVEABLE)
#: the IND true-positive rate the saved threshold aims at on held-out IND images
TARGET_TPR = 0.95
FIELDS = ["features", "tokens", "tag_probs", "tag_attention"]
#: what a vision-language detector needs from the extraction: pooled features (the offline dual
#: encoder's input); the pass also skips and reports images that cannot be decoded
VLM_FIELDS = ["features"]
#: the `tagood fit` / `tagood score` option of each backbone file
_OPTION = {"checkpoint": "--checkpoint", "tag_list": "--tags", "thresholds": "--thresholds", "path": "--clip",
           "vocabulary": "--vocabulary"}


def backbone_spec(backbone: str | Mapping[str, Any]) -> dict[str, Any]:
    """A backbone name (``"efficientnet-lite0"``) or spec (``{"name": "ram", "checkpoint": ...}``, see
    :func:`tagood.backbones.factory.build_backbone`) with its file paths made absolute, as saved in ``tagood.json``."""
    spec = {"name": backbone} if isinstance(backbone, str) else dict(backbone)
    spec.setdefault("name", "efficientnet-lite0")
    for k in PATH_KEYS:
        if isinstance(spec.get(k), (str, Path)):
            spec[k] = str(Path(spec[k]).expanduser().resolve())
    return spec


def _load_split(src: ImageSource, bb: Any, cache: str | Path | None, split: str, stream_above_gb: float | None,
                fields: list[str] = FIELDS) -> tuple[Any, Any]:
    """Extract ``src`` (resumable, cached) and return (reader, feature set); the heavy fields stay in the
    memory-mapped cache when the split is larger than ``stream_above_gb``."""
    reader = extract_split(src, bb, cache, split=split, fields=fields)
    stream = heavy_fields(reader, fields, stream_above_gb)
    if stream:
        log.info("%s: %d images, streaming %s from the cache shard by shard", split, len(reader), stream)
    return reader, reader.to_featureset(fields, name=split, stream=stream)


def _vlm_specs(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(extraction backbone, dual encoder) of a vision-language detector: CLIP from ``spec["path"]``
    when the backbone named is ``clip``, else the built-in offline encoder on EfficientNet-Lite0."""
    if spec["name"] == "clip":
        if "path" not in spec:
            raise ValueError("a vision-language detector with --backbone clip needs --clip DIR (a CLIP directory)")
        return {"name": "clip", "path": spec["path"]}, {"name": "clip", "path": spec["path"]}
    if spec["name"] != "efficientnet-lite0":
        raise ValueError(f"vision-language detectors need a dual encoder: CLIP (--backbone clip --clip DIR) or the "
                         f"built-in offline one (--backbone efficientnet-lite0), not {spec['name']}")
    return {"name": "efficientnet-lite0"}, {"name": "offline"}


def no_tag_rule(det: Any, base: str) -> str | None:
    """The fitted detector's rule for images with no kept IND tag: ``"ood"`` (the paper; they score
    ``NO_TAG_SCORE``), ``"fallback"`` (scored with all their tokens), None for a method without tags."""
    if base not in TAG_SAVEABLE:
        return None
    rule = getattr(det, "no_tag", None) or det.hparams.get("no_tag")
    return "fallback" if rule == "fallback" else "ood"


def _no_tag(scores: np.ndarray, rule: str | None) -> np.ndarray:
    return scores >= NO_TAG_SCORE if rule == "ood" else np.zeros(len(scores), bool)


def is_ood(scores: np.ndarray, threshold: float, rule: str | None) -> np.ndarray:
    """The saved decision: above the threshold, or no kept tag under the ``ood`` rule. NaN is an error
    (raise it before: :func:`check_finite`)."""
    s = np.asarray(scores, dtype=np.float64)
    return (s > threshold) | _no_tag(s, rule)


def check_finite(method: str, scores: np.ndarray, what: str, cause: str = "") -> None:
    """Raise a ValueError naming the method and how many of the scores are NaN."""
    nan = np.isnan(np.asarray(scores, dtype=np.float64))
    if nan.any():
        raise ValueError(f"{method} gave NaN scores for {int(nan.sum())} of {len(nan)} {what}; a NaN score cannot be "
                         f"judged in- or out-of-distribution.{' ' + cause if cause else ''}")


def decision_threshold(method: str, held: np.ndarray, rule: str | None, target: float = TARGET_TPR) -> dict[str, Any]:
    """Threshold from held-out IND scores (higher = more OOD): the smallest held-out score that accepts at
    least ``target`` of them (no-tag images under rule ``ood`` count as rejected); when that cannot be
    reached, the largest tagged score (every tagged image accepted). Returns ``threshold``,
    ``heldout_tpr`` (the fraction of held-out IND images accepted), ``heldout_no_tag_fraction`` and
    ``degenerate`` (``target`` not reached)."""
    s = np.asarray(held, dtype=np.float64)
    check_finite(method, s, "held-out IND images")
    no_tag = _no_tag(s, rule)
    tagged = np.sort(s[~no_tag])
    if not len(tagged):
        raise ValueError(f"{method}: none of the {len(s)} held-out IND images kept an IND tag, so no threshold can be "
                         f"set; use a lower tag threshold or a vocabulary with more tags per class")
    need = int(np.ceil(target * len(s) - 1e-9))  # images to accept
    degenerate = need > len(tagged)
    thr = float(tagged[-1] if degenerate else tagged[max(need, 1) - 1])
    tpr = float(np.mean(~is_ood(s, thr, rule)))
    return {"threshold": thr, "heldout_tpr": tpr, "heldout_no_tag_fraction": float(no_tag.mean()), "degenerate": degenerate}


def _nan_cause(det: Any, fs: Any, rows: np.ndarray) -> str:
    """Why a detector scored NaN: a diverged training, NaN in the detector's saved state, or NaN in
    the extracted features of those images."""
    hist = getattr(det, "history", None) or []
    bad = next((h for h in hist if not np.isfinite(h.get("loss", 0.0))), None)
    if bad is not None:
        return (f"Cause: the training diverged (loss {bad['loss']} at epoch {bad.get('epoch', '?')}); "
                f"fit again with a lower learning rate (the lr option, e.g. tagood[lr=1e-4]) or fewer epochs.")
    state = [np.asarray(getattr(det, k)) for k in ("centres",) if getattr(det, k, None) is not None]
    model = getattr(det, "model", None)
    if model is not None and hasattr(model, "state_dict"):
        state += [v.detach().float().cpu().numpy() for v in model.state_dict().values()]
    if any(not np.isfinite(a).all() for a in state):
        return "Cause: the detector's parameters (centres or projector weights) hold NaN/inf; fit it again."
    part = fs.subset(np.sort(rows))
    for name in ("tokens", "features", "tag_probs", "tag_attention"):
        v = getattr(part, name, None)
        arr = getattr(v, "values", getattr(v, "maps", v))
        if arr is not None and not np.isfinite(np.asarray(arr, dtype=np.float32)).all():
            return (f"Cause: the extracted {name} of these images hold NaN/inf (a damaged feature cache?); delete the cache "
                    f"entry and extract again. First: {(part.paths or ['?'])[0]}")
    return f"The detector's inputs are finite; first image: {(part.paths or ['?'])[0]}."


def _local_device(device: str) -> str:
    """This process's device (``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun), joining the torchrun world's process
    group first when there is one."""
    device = distributed.local_device(device)
    if distributed.world().distributed:
        distributed.init(device)
    return device


def _dual_encoder(spec: Mapping[str, Any], bb: Any, device: str) -> Any:
    from tagood.backbones.factory import build_dual_encoder

    return build_dual_encoder(dict(spec), bb, device=device)


def fit_folder(folder: str | Path, out: str | Path, method: str = "tagood", backbone: str | Mapping[str, Any] = "efficientnet-lite0",
               cache: str | Path | None = None, device: str = "cpu", seed: int = 0, holdout: float = 0.1,
               stream_above_gb: float | None = STREAM_ABOVE_GB) -> dict[str, Any]:
    """Fit ``method`` on ``folder/<class>/*`` and save it with its threshold to ``out``.

    ``backbone``: a name or a spec with the tagger's files (RAM: ``checkpoint``, ``tag_list``,
    ``thresholds``; CLIP: ``path``), saved (paths made absolute) so that :func:`score_images` rebuilds
    the same tagger. Scores are higher = more OOD."""
    base, _ = detectors.parse_name(method)
    if base not in SAVEABLE:
        raise ValueError(f"`tagood fit` saves {', '.join(SAVEABLE)} detectors; '{base}' cannot be saved yet")
    src = FolderSource(folder)
    if not src.class_names:
        raise ValueError(f"{folder}: `tagood fit` needs one sub-folder per IND class")
    det = detectors.create(method)
    spec, dual_spec = backbone_spec(backbone), None
    if base in VLM_SAVEABLE:
        spec, dual_spec = _vlm_specs(spec)
    bb = build_backbone(spec, device=device)
    reader, fs = _load_split(src, bb, cache, "fit", stream_above_gb, VLM_FIELDS if dual_spec else FIELDS)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(fs), bool)
    held[rng.choice(len(fs), size=max(1, int(holdout * len(fs))), replace=False)] = True
    fit_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
    device = _local_device(device)
    ctx = Context(class_names=src.class_names, device=device, seed=seed)
    train, test = fs.subset(fit_idx, lazy=True), fs.subset(held_idx, lazy=True)  # a streamed folder stays streamed
    if dual_spec is None:
        ctx = replace(ctx, **tagger_context(bb, cache))
    else:  # dual-encode only the detector's own few-shot picks of the training images, and the held-out ones
        from tagood.detectors.vlm.base import few_shot_indices

        ctx.dual_encoder = _dual_encoder(dual_spec, bb, ctx.device)
        train = train.subset(few_shot_indices(train.labels, getattr(det, "shots", None), getattr(det, "seed", seed)))
        ctx.dual_encoder.attach(train, src)
        ctx.dual_encoder.attach(test, src)
    det.fit(train, ctx)
    s_held = distributed.score(det, test)  # split across the ranks of a torchrun world, gathered in order
    nan = np.flatnonzero(np.isnan(s_held))
    if len(nan):
        check_finite(method, s_held, "held-out IND images", _nan_cause(det, test, nan))
    rule = no_tag_rule(det, base)
    dec = decision_threshold(method, s_held, rule)
    warnings = []
    if dec["degenerate"]:
        warnings.append(f"{method}: {100 * dec['heldout_no_tag_fraction']:.1f}% of the held-out IND images have no kept IND tag "
                        f"(no_tag=ood flags them), so the threshold cannot accept {100 * TARGET_TPR:.0f}% of IND: it accepts every "
                        f"tagged held-out image and reaches a TPR of {100 * dec['heldout_tpr']:.1f}%. A lower tag threshold, a "
                        f"vocabulary with more tags per class, or [no_tag=fallback] avoids this.")
    for w in warnings:
        log.warning(w)
    log.info("threshold %.6g: %.1f%% of %d held-out IND images accepted (target %.0f%%)", dec["threshold"],
             100 * dec["heldout_tpr"], len(s_held), 100 * TARGET_TPR)
    meta = {"method": method, "backbone": {"name": spec["name"], "id": bb.id, "weights_hash": bb.weights_hash, "spec": spec},
            "dual_encoder": dual_spec,
            "classes": src.class_names, "threshold": dec["threshold"], "no_tag_rule": rule, "target_tpr": TARGET_TPR,
            "heldout_tpr": dec["heldout_tpr"], "heldout_no_tag_fraction": dec["heldout_no_tag_fraction"],
            "threshold_degenerate": dec["degenerate"], "warnings": warnings,
            "n_train": int(len(train)), "n_heldout": int(len(held_idx)),
            "streamed": sorted(train.streamed), "failed_images": reader.failed}
    if getattr(det, "vocab_rule_used", None) is not None:  # a tag-based method: how its IND vocabulary was chosen
        meta["vocabulary"] = {"rule": det.vocab_rule_used, "tags_per_class": int(det.per_class_used),
                              "cv_no_tag_fraction": float(det.heldout_no_tag_fraction)}
    if distributed.world().is_main:  # under torchrun rank 0 alone writes the detector directory
        d = det.save(out)
        atomic_write_text(Path(d) / "tagood.json", json.dumps(meta, indent=1))
    distributed.barrier()  # every rank returns once the directory is complete
    return meta


class DetectorFileError(CheckpointError):
    """A saved detector directory is missing, unreadable or damaged; the message names the file (never its
    contents) and says what to do."""


def check_detector_dir(detector_dir: str | Path) -> dict[str, Any]:
    """Check a directory written by :func:`fit_folder` before anything in it is loaded, and return its
    ``tagood.json``: the JSON is read and validated against :class:`tagood.pipeline.meta.DetectorMeta` (a
    finite ``threshold`` -- scores are higher = more OOD, ``score > threshold`` is OOD -- the backbone
    record, the no-tag rule, ...), and every ``.safetensors`` file's header is parsed. Raises
    :class:`DetectorFileError` naming the file; the CLI (``tagood score``) and library callers share this
    one check."""
    from safetensors import safe_open

    from tagood.core.validation import SchemaError
    from tagood.pipeline.meta import validate_detector_meta

    d = Path(detector_dir)
    meta_path = d / "tagood.json"
    if not d.is_dir():
        raise DetectorFileError(f"{d} is not a directory written by `tagood fit`")
    if not meta_path.is_file():
        raise DetectorFileError(f"{d} is not a detector saved by `tagood fit` (no tagood.json)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        raise DetectorFileError(f"{meta_path} is not valid JSON; re-run `tagood fit` to save the detector again") from None
    try:
        validate_detector_meta(meta, meta_path)
    except SchemaError as e:
        raise DetectorFileError(str(e)) from None
    for f in sorted(d.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="numpy") as st:
                st.keys()
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise DetectorFileError(f"{f} is damaged or not a safetensors file ({type(e).__name__}); re-run `tagood fit` to "
                                    "save the detector again") from None
    return meta


def score_images(detector_dir: str | Path, inputs: list[str | Path], out: str | Path | None = None, cache: str | Path | None = None,
                 device: str = "cpu", backbone: Mapping[str, Any] | None = None,
                 stream_above_gb: float | None = STREAM_ABOVE_GB) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Score image files / folders with a saved detector (higher = more OOD); returns (rows, failed) and
    writes a CSV when ``out`` is given. The tagger is rebuilt from the spec saved by :func:`fit_folder`;
    ``backbone`` overrides keys of it (e.g. ``{"checkpoint": NEW_PATH}`` when the weights moved) and the
    weights must hash the same as at fit time."""
    from tagood.detectors.tagood.detector import TagOOD

    d = Path(detector_dir)
    meta = check_detector_dir(d)
    device = _local_device(device)
    base, _ = detectors.parse_name(meta["method"])
    if base in VLM_SAVEABLE:
        from tagood.detectors.vlm.krnft import KRNFT

        det: Any = KRNFT.load(d, device=device)
    else:
        det = TagOOD.load(d, device=device)
    saved = meta["backbone"].get("spec", {"name": meta["backbone"]["name"]})
    spec = backbone_spec({**saved, **(backbone or {})})
    gone = [f"{k} {spec[k]}" for k in PATH_KEYS if k in spec and not Path(spec[k]).exists()]
    if gone:
        raise FileNotFoundError(f"{d} was fitted with the {spec['name']} tagger loaded from files that are not there now: "
                                f"{'; '.join(gone)}. Give their new location (`tagood score` options "
                                f"{', '.join(_OPTION.get(k, k) for k in PATH_KEYS if k in spec)})")
    bb = build_backbone(spec, device=device)
    if bb.weights_hash != meta["backbone"]["weights_hash"]:
        raise ValueError(f"{d} was fitted with backbone weights {meta['backbone']['weights_hash']}, these are {bb.weights_hash}")
    files: list[str] = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += [s.ident for s in FolderSource(p).samples]
        else:
            files.append(str(p))
    src: ImageSource = FilesSource(files)
    dual_spec = meta.get("dual_encoder")
    reader, fs = _load_split(src, bb, cache, "score", stream_above_gb, VLM_FIELDS if dual_spec else FIELDS)
    if dual_spec and len(fs):
        dual_spec = {**dual_spec, **({"path": spec["path"]} if "path" in dual_spec else {})}  # moved CLIP: --clip
        _dual_encoder(dual_spec, bb, device).attach(fs, src)
    scores = distributed.score(det, fs) if len(fs) else np.zeros(0)  # split across torchrun ranks, gathered in order
    bad = np.flatnonzero(np.isnan(scores))
    if len(bad):
        names = ", ".join((fs.paths or [])[i] for i in bad[:3]) if fs.paths else ""
        check_finite(meta["method"], scores, "images", f"{_nan_cause(det, fs, bad)} NaN for: {names}"
                     f"{' ...' if len(bad) > 3 else ''}")
    # detectors saved before the no-tag rule was recorded follow the paper's rule (the only one then)
    rule = meta.get("no_tag_rule", "ood" if base in TAG_SAVEABLE else None)
    flags = is_ood(scores, meta["threshold"], rule)
    rows = [{"path": p, "score": float(s), "is_ood": bool(f)} for p, s, f in zip(fs.paths or [], scores, flags)]
    if out is not None and distributed.world().is_main:  # under torchrun rank 0 alone writes the CSV
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=["path", "score", "is_ood"])
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(out, buf.getvalue())
    distributed.barrier()
    return rows, reader.failed
