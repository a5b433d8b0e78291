"""Fit a detector on a labelled image folder, save it, and score new images with it (``tagood fit`` / ``tagood score``).

Every registered detector that is not test-time can be fitted and saved: its inputs are prepared as ``tagood bench``
prepares them (:mod:`tagood.pipeline.inputs`: the IND linear head and its logits, ODIN's images, FeatureNorm's
jigsaw pseudo-OOD images, a dual encoder's embeddings, the tagger's context), and it is written in the one saved
format (:meth:`tagood.detectors.Detector.save`, read back by :func:`tagood.detectors.load`). The saved directory
(:mod:`tagood.pipeline.detector_dir`) also holds ``tagood.json``: the backbone it was fitted on and a decision
threshold from a held-out 10% of the IND training images (scores are higher = more OOD; the decision rule is
:mod:`tagood.pipeline.threshold`). Test-time detectors (AdaNeg) are refused before any work, with the reason.

Under torchrun (``torchrun --nproc-per-node N -m tagood fit|score ...``, :mod:`tagood.runtime.distributed`) each rank
extracts its part of the folder into the shared cache, the IND head and every detector but TagOOD's projector family
are fitted on rank 0 and their state broadcast (:func:`tagood.detectors.base.fit_once`), TagOOD's projector trains
with DDP, scoring is split across the ranks and gathered in order, and only rank 0 writes the detector directory /
the CSV.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tagood import detectors
from tagood.backbones.factory import PATH_KEYS, build_backbone, tagger_context
from tagood.cache import STREAM_ABOVE_GB
from tagood.core.context import Context
from tagood.data import FilesSource, FolderSource, ImageSource, SubsetSource
from tagood.detectors.base import fit_once
from tagood.errors import CheckpointError, ConfigError, InputError
from tagood.extract import entry_images
from tagood.extract.features import load_split
from tagood.pipeline import inputs as prep
from tagood.pipeline.detector_dir import (
    HEAD_FILE,
    DetectorFileError,
    check_detector_dir,
    read_head,
    write_head,
    write_meta,
)
from tagood.pipeline.inputs import Needs, backbone_spec
from tagood.pipeline.threshold import (
    TARGET_TPR,
    check_finite,
    decision_threshold,
    degenerate_warning,
    is_ood,
    nan_cause,
    no_tag_rule,
)
from tagood.runtime import distributed
from tagood.runtime.fileio import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["DetectorFileError", "backbone_spec", "check_detector_dir", "decision_threshold", "fit_folder", "is_ood",
           "saveable", "score_images"]

#: the `tagood fit` / `tagood score` option of each backbone file
_OPTION = {"checkpoint": "--checkpoint", "tag_list": "--tags", "thresholds": "--thresholds", "path": "--clip",
           "vocabulary": "--vocabulary"}


def saveable(det: Any) -> None:
    """Raise a :class:`tagood.errors.ConfigError` (before any work) when ``det`` cannot be saved by ``tagood fit``:
    a test-time detector's state is the test stream itself."""
    if det.test_time or not det.saveable:
        reason = det.not_saveable_reason or ("test-time: its state is the test stream itself; score it with "
                                             "`tagood bench`")
        raise ConfigError(f"`tagood fit` cannot save '{det.name}': {reason}")


def _local_device(device: str) -> str:
    """This process's device (``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun), joining the torchrun world's process
    group first when there is one."""
    device = distributed.local_device(device)
    if distributed.world().distributed:
        distributed.init(device)
    return device


def _heldout(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, held-out rows) of ``n`` extracted images: a seeded ``holdout`` fraction (at least one) held out."""
    held = np.zeros(n, bool)
    held[np.random.default_rng(seed).choice(n, size=max(1, int(holdout * n)), replace=False)] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _shots(det: Any, seed: int) -> tuple[int | None, int]:
    """(shots, seed) of a vision-language detector's few-shot pick, as the detector itself draws it (one image per
    class for a zero-shot detector, which learns nothing from them), as ``tagood bench`` picks them."""
    opts = det.hparams
    return opts.get("shots", getattr(det, "shots", 1)), int(opts.get("seed", getattr(det, "seed", seed)))


def fit_folder(folder: str | Path, out: str | Path, method: str = "tagood",
               backbone: str | Mapping[str, Any] = "efficientnet-lite0", cache: str | Path | None = None,
               device: str = "cpu", seed: int = 0, holdout: float = 0.1,
               stream_above_gb: float | None = STREAM_ABOVE_GB, skip_empty_classes: bool = False) -> dict[str, Any]:
    """Fit ``method`` on ``folder/<class>/*`` and save it with its threshold to ``out``.

    Args:
        folder: IND training images, one sub-folder per class.
        out: the directory to write (the detector's files and ``tagood.json``).
        method: a registered detector's spec, e.g. ``"knn[k=10]"`` (not a test-time one).
        backbone: a name or a spec with the tagger's files (RAM: ``checkpoint``, ``tag_list``, ``thresholds``;
            CLIP: ``path``), saved (paths made absolute) so that :func:`score_images` rebuilds the same tagger.
        cache: the feature cache root (default: :func:`tagood.backbones.home.default_cache_root`).
        device: the torch device (``cuda`` under torchrun: this rank's).
        seed: seeds the held-out split and the detector's context.
        holdout: the fraction of the images held out for the threshold.
        stream_above_gb: stream heavy fields from the cache above this size (None: never).
        skip_empty_classes: leave out, with a warning, a class folder that cannot be read or holds no image (default:
            an error naming it); the saved class list is the one the detector was fitted on.
    Returns:
        The ``tagood.json`` document written (threshold, held-out TPR, counts, failed images, warnings).
    Raises:
        tagood.errors.ConfigError: the method cannot be saved, or its options cannot work on this folder (before any
            extraction).
        tagood.errors.InputError: the folder has no class sub-folders, a class folder is unreadable or empty (without
            ``skip_empty_classes``), a method that reads the IND head gets a single class, no image decodes, a score
            is NaN.
    """
    det = detectors.create(method)
    saveable(det)
    src = FolderSource(folder, skip_empty_classes=skip_empty_classes)
    if not src.class_names:
        raise InputError(f"{folder}: `tagood fit` needs one sub-folder per IND class")
    n_fit = len(src) - max(1, int(holdout * len(src)))
    det.check_data(n_fit, len(src.class_names))  # options that cannot work on this folder fail before extraction
    need = prep.needs(det)
    notes = [f"class folder '{c}' {why}: left out (--skip-empty-classes); the detector knows "
             f"{len(src.class_names)} classes: {', '.join(src.class_names)}" for c, why in src.skipped_classes]
    if len(src.class_names) == 1:
        if need.head:
            raise InputError(f"{folder} has one class folder ({src.class_names[0]}); {method} reads the logits of a "
                             "linear head over the IND classes, which needs at least 2 (its scores would be constant): "
                             "add class folders, or use a method without the head such as knn or mahalanobis")
        notes.append(f"{folder} has one class folder ({src.class_names[0]}): {method} is fitted on it as one IND class")
        log.warning(notes[-1])  # (a left-out class folder was logged when the folder was read)
    spec, dual_spec = backbone_spec(backbone), None
    if need.dual:
        spec, dual_spec = prep.vlm_specs(spec)
    bb = build_backbone(spec, device=device)
    prep.check_outputs(method, need, bb)
    reader, fs = load_split(src, bb, cache, "fit", need.fields, stream_above_gb)
    fit_idx, held_idx = _heldout(len(fs), holdout, seed)
    device = _local_device(device)
    train, test = fs.subset(fit_idx, lazy=True), fs.subset(held_idx, lazy=True)  # a streamed folder stays streamed
    if need.images:  # ODIN: the pixels of the same rows, decoded again when read
        train.images = entry_images(reader, src, bb, rows=fit_idx)
        test.images = entry_images(reader, src, bb, rows=held_idx)
    ctx, head = _fit_context(need, src, bb, cache, device, seed, train, lambda: SubsetSource(src, reader.indices[fit_idx]))
    if head is not None:
        from tagood.detectors.head import with_head_logits

        train = with_head_logits(train, head) if need.fit_logits else train
        test = with_head_logits(test, head) if need.score_logits else test
    if dual_spec is not None:  # dual-encode only the detector's own few-shot picks of the training images, and the held-out ones
        from tagood.detectors.vlm.base import few_shot_indices

        dual = prep.dual_encoder(dual_spec, bb, ctx.device)
        ctx.dual_encoder = dual
        train = train.subset(few_shot_indices(np.asarray(train.labels), *_shots(det, seed)))
        dual.attach(train, src)
        dual.attach(test, src)
    fit_once(det, train, ctx)  # under torchrun: fitted on rank 0, its state broadcast (TagOOD's projector: every rank)
    s_held = distributed.score(det, test)  # split across the ranks of a torchrun world, gathered in order
    nan = np.flatnonzero(np.isnan(s_held))
    if len(nan):
        check_finite(method, s_held, "held-out IND images", nan_cause(det, test, nan))
    rule = no_tag_rule(det)
    dec = decision_threshold(method, s_held, rule)
    warnings = [degenerate_warning(method, dec)] if dec["degenerate"] else []
    for w in warnings:
        log.warning(w)
    warnings = notes + warnings
    log.info("threshold %.6g: %.1f%% of %d held-out IND images accepted (target %.0f%%)", dec["threshold"],
             100 * dec["heldout_tpr"], len(s_held), 100 * TARGET_TPR)
    meta = {"method": method, "backbone": {"name": spec["name"], "id": bb.id, "weights_hash": bb.weights_hash, "spec": spec},
            "dual_encoder": dual_spec,
            "classes": src.class_names, "threshold": dec["threshold"], "no_tag_rule": rule, "target_tpr": TARGET_TPR,
            "heldout_tpr": dec["heldout_tpr"], "heldout_no_tag_fraction": dec["heldout_no_tag_fraction"],
            "threshold_degenerate": dec["degenerate"], "warnings": warnings,
            "n_train": int(len(train)), "n_heldout": int(len(held_idx)),
            "streamed": sorted(train.streamed), "failed_images": reader.failed,
            "head": HEAD_FILE if need.keep_head else None}
    tagged: Any = det  # a tag-based method records how its IND vocabulary was chosen
    if getattr(tagged, "vocab_rule_used", None) is not None:
        meta["vocabulary"] = {"rule": tagged.vocab_rule_used, "tags_per_class": int(tagged.per_class_used),
                              "cv_no_tag_fraction": float(tagged.heldout_no_tag_fraction)}
    if distributed.world().is_main:  # under torchrun rank 0 alone writes the detector directory
        d = det.save(out)
        if need.keep_head and head is not None:
            write_head(d, head)
        write_meta(d, meta)  # last: a directory with tagood.json is complete
    distributed.barrier()  # every rank returns once the directory is complete
    return meta


def _fit_context(need: Needs, src: ImageSource, bb: Any, cache: str | Path | None, device: str, seed: int,
                 train: Any, train_src: Callable[[], ImageSource]) -> tuple[Context, Any]:
    """The context ``det.fit`` gets, as ``tagood bench`` builds it, and the IND head (None when not needed).
    ``train``: the training rows' features; ``train_src()``: their images."""
    ctx = Context(class_names=src.class_names, device=device, seed=seed)
    if not need.dual:
        ctx = replace(ctx, **tagger_context(bb, cache))
    head = None
    if need.head:
        from tagood.detectors.head import Classifier, fit_head

        # under torchrun fitted once, on rank 0, and broadcast
        head = distributed.broadcast(fit_head(train, src.class_names, seed=seed, device=device)
                                     if distributed.world().is_main else None)
        assert head is not None
        ctx.head = head
        if need.images:
            ctx.model = Classifier(bb, head, device)
    if need.pseudo_fields:
        ctx.pseudo_ood = prep.pseudo_ood(train_src(), bb, cache, need.pseudo_fields, seed)
    return ctx, head


def score_images(detector_dir: str | Path, inputs: list[str | Path], out: str | Path | None = None,
                 cache: str | Path | None = None, device: str = "cpu", backbone: Mapping[str, Any] | None = None,
                 stream_above_gb: float | None = STREAM_ABOVE_GB) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Score image files / folders with a saved detector (higher = more OOD).

    Args:
        detector_dir: a directory written by :func:`fit_folder`.
        inputs: image files and folders (their images, recursively by class sub-folder).
        out: write a CSV of ``path, score, is_ood`` here (rank 0 of torchrun).
        cache: the feature cache root.
        device: the torch device.
        backbone: keys overriding the saved backbone spec (e.g. ``{"checkpoint": NEW_PATH}`` when the weights
            moved); the weights must hash the same as at fit time.
        stream_above_gb: stream heavy fields from the cache above this size (None: never).
    Returns:
        ``(rows, failed)``: one ``{"path", "score", "is_ood"}`` per scored image, and the images that failed to decode.
    Raises:
        DetectorFileError: the directory is damaged (checked before anything is loaded).
        tagood.errors.InputError: a tagger file moved (naming the option that gives its new place), a score is NaN.
    """
    d = Path(detector_dir)
    meta = check_detector_dir(d)
    device = _local_device(device)
    saved = meta["backbone"].get("spec", {"name": meta["backbone"]["name"]})
    spec = backbone_spec({**saved, **(backbone or {})})
    gone = [f"{k} {spec[k]}" for k in PATH_KEYS if k in spec and not Path(spec[k]).exists()]
    if gone:
        raise InputError(f"{d} was fitted with the {spec['name']} tagger loaded from files that are not there now: "
                         f"{'; '.join(gone)}. Give their new location (`tagood score` options "
                         f"{', '.join(_OPTION.get(k, k) for k in PATH_KEYS if k in spec)})")
    bb = build_backbone(spec, device=device)
    if bb.weights_hash != meta["backbone"]["weights_hash"]:
        raise CheckpointError(f"{d} was fitted with backbone weights {meta['backbone']['weights_hash']}, these are "
                              f"{bb.weights_hash}; give the tagger files it was fitted with")
    head = read_head(d, meta["classes"]) if meta.get("head") else None
    dual = None
    if meta.get("dual_encoder"):  # a moved CLIP: its new place is --clip
        dual_spec = {**meta["dual_encoder"], **({"path": spec["path"]} if "path" in meta["dual_encoder"] else {})}
        dual = prep.dual_encoder(dual_spec, bb, device)
    det = _load(d, bb, head, dual, cache, device, meta)
    need = prep.needs(det)
    src = _files(inputs)
    reader, fs = load_split(src, bb, cache, "score", need.fields, stream_above_gb)
    if need.images:
        fs.images = entry_images(reader, src, bb)
    if head is not None and need.score_logits:
        from tagood.detectors.head import with_head_logits

        fs = with_head_logits(fs, head)
    if dual is not None and len(fs):
        dual.attach(fs, src)
    scores = distributed.score(det, fs) if len(fs) else np.zeros(0)  # split across torchrun ranks, gathered in order
    bad = np.flatnonzero(np.isnan(scores))
    if len(bad):
        names = ", ".join((fs.paths or [])[i] for i in bad[:3]) if fs.paths else ""
        check_finite(meta["method"], scores, "images", f"{nan_cause(det, fs, bad)} NaN for: {names}"
                     f"{' ...' if len(bad) > 3 else ''}")
    flags = is_ood(scores, meta["threshold"], meta.get("no_tag_rule"))
    rows = [{"path": p, "score": float(s), "is_ood": bool(f)} for p, s, f in zip(fs.paths or [], scores, flags, strict=True)]
    if out is not None and distributed.world().is_main:  # under torchrun rank 0 alone writes the CSV
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=["path", "score", "is_ood"])
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(out, buf.getvalue())
    distributed.barrier()
    return rows, reader.failed


def _load(d: Path, bb: Any, head: Any, dual: Any, cache: str | Path | None, device: str, meta: Mapping[str, Any]) -> Any:
    """The saved detector with what is not its state given again: the device, the tagger's context, the IND head,
    ODIN's differentiable model (backbone + head) and the dual encoder."""
    ctx = Context(class_names=list(meta["classes"]), device=device, head=head, dual_encoder=dual,
                  **({} if dual is not None else tagger_context(bb, cache)))
    det = detectors.load(d)
    if "model" in det.context_requires and head is not None:
        from tagood.detectors.head import Classifier

        ctx.model = Classifier(bb, head, device)
    return det.attach(ctx)


def _files(paths: list[str | Path]) -> ImageSource:
    """The images named: files as given, folders by their images."""
    files: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            # an unreadable sub-folder is an error (its images would vanish); an empty one has nothing to score
            files += [s.ident for s in FolderSource(p, skip_empty_classes=True, skip_unreadable=False).samples]
        else:
            files.append(str(p))
    return FilesSource(files)
