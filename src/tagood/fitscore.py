"""Fit a detector on a labelled image folder, save it, and score new images with it (``tagood fit`` / ``tagood score``).

The saved directory holds the detector (safetensors + JSON, no pickle) and ``tagood.json``: the
backbone it was fitted on and a decision threshold = the score that accepts 95% of a held-out 10%
of the IND training images (so ``is_ood = score > threshold`` has a 95% IND true-positive rate).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tagood import detectors
from tagood.backbones.multi import primary_device
from tagood.bench.models import PATH_KEYS, build_backbone, tagger_context
from tagood.cache import heavy_fields
from tagood.data import FilesSource, FolderSource, ImageSource
from tagood.extract import extract_split
from tagood.types import Context

log = logging.getLogger(__name__)

#: vision-language detectors `tagood fit` saves (scored from dual-encoder image embeddings)
VLM_SAVEABLE = ("krnft",)
SAVEABLE = ("tagood", "cs", "ce+cs", *VLM_SAVEABLE)
FIELDS = ["features", "tokens", "tag_probs", "tag_attention"]
#: what a vision-language detector needs from the extraction: pooled features (the offline dual
#: encoder's input); the pass also skips and reports images that cannot be decoded
VLM_FIELDS = ["features"]
#: default of ``stream_above_gb``: a folder whose tokens / tag maps would take more float32 GiB than
#: this is streamed shard by shard from the feature cache (``None``: never, 0: always)
STREAM_ABOVE_GB = 8.0
#: the `tagood fit` / `tagood score` option of each backbone file
_OPTION = {"checkpoint": "--checkpoint", "tag_list": "--tags", "thresholds": "--thresholds", "path": "--clip",
           "vocabulary": "--vocabulary"}


def backbone_spec(backbone: str | Mapping[str, Any]) -> dict[str, Any]:
    """A backbone name (``"efficientnet-lite0"``) or spec (``{"name": "ram", "checkpoint": ...}``, see
    :func:`tagood.bench.models.build_backbone`) with its file paths made absolute, as saved in ``tagood.json``."""
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


def _dual_encoder(spec: Mapping[str, Any], bb: Any, device: str) -> Any:
    from tagood.vlm import build_dual_encoder

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
    ctx = Context(class_names=src.class_names, device=primary_device(device), seed=seed)
    train, test = fs.subset(fit_idx, lazy=True), fs.subset(held_idx, lazy=True)  # a streamed folder stays streamed
    if dual_spec is None:
        ctx.extra.update(tagger_context(bb, cache))
    else:  # dual-encode only the detector's own few-shot picks of the training images, and the held-out ones
        from tagood.vlm.base import few_shot_indices

        ctx.dual_encoder = _dual_encoder(dual_spec, bb, ctx.device)
        train = train.subset(few_shot_indices(train.labels, getattr(det, "shots", None), getattr(det, "seed", seed)))
        ctx.dual_encoder.attach(train, src)
        ctx.dual_encoder.attach(test, src)
    det.fit(train, ctx)
    s_held = det.score(test)
    threshold = float(np.quantile(s_held, 0.95, method="higher"))
    d = det.save(out)
    meta = {"method": method, "backbone": {"name": spec["name"], "id": bb.id, "weights_hash": bb.weights_hash, "spec": spec},
            "dual_encoder": dual_spec,
            "classes": src.class_names, "threshold": threshold, "n_train": int(len(train)), "n_heldout": int(len(held_idx)),
            "streamed": sorted(train.streamed), "failed_images": reader.failed}
    (Path(d) / "tagood.json").write_text(json.dumps(meta, indent=1))
    return meta


def score_images(detector_dir: str | Path, inputs: list[str | Path], out: str | Path | None = None, cache: str | Path | None = None,
                 device: str = "cpu", backbone: Mapping[str, Any] | None = None,
                 stream_above_gb: float | None = STREAM_ABOVE_GB) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Score image files / folders with a saved detector (higher = more OOD); returns (rows, failed) and
    writes a CSV when ``out`` is given. The tagger is rebuilt from the spec saved by :func:`fit_folder`;
    ``backbone`` overrides keys of it (e.g. ``{"checkpoint": NEW_PATH}`` when the weights moved) and the
    weights must hash the same as at fit time."""
    from tagood.tagood.detector import TagOOD

    d = Path(detector_dir)
    meta_path = d / "tagood.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{d} is not a detector saved by `tagood fit` (no tagood.json)")
    meta = json.loads(meta_path.read_text())
    base, _ = detectors.parse_name(meta["method"])
    if base in VLM_SAVEABLE:
        from tagood.vlm.krnft import KRNFT

        det: Any = KRNFT.load(d, device=primary_device(device))
    else:
        det = TagOOD.load(d, device=primary_device(device))
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
        _dual_encoder(dual_spec, bb, primary_device(device)).attach(fs, src)
    scores = det.score(fs) if len(fs) else np.zeros(0)
    rows = [{"path": p, "score": float(s), "is_ood": bool(s > meta["threshold"])} for p, s in zip(fs.paths or [], scores)]
    if out is not None:
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "score", "is_ood"])
            w.writeheader()
            w.writerows(rows)
    return rows, reader.failed
