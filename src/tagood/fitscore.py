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
from typing import Any

import numpy as np

from tagood import detectors
from tagood.bench.models import build_backbone
from tagood.data import FilesSource, FolderSource, ImageSource, SubsetSource
from tagood.extract import extract_split
from tagood.types import Context

log = logging.getLogger(__name__)

SAVEABLE = ("tagood", "cs", "ce+cs")
FIELDS = ["features", "tokens", "tag_probs", "tag_attention"]


def _context(backbone: Any, class_names: list[str] | None, device: str, seed: int) -> Context:
    ctx = Context(class_names=class_names, device=device, seed=seed)
    ctx.extra["tag_names"] = getattr(backbone, "tag_names", None)
    if hasattr(backbone, "cam"):
        ctx.extra["attend"] = backbone.cam
    return ctx


def fit_folder(folder: str | Path, out: str | Path, method: str = "tagood", backbone: str = "efficientnet-lite0",
               cache: str | Path | None = None, device: str = "cpu", seed: int = 0, holdout: float = 0.1) -> dict[str, Any]:
    """Fit ``method`` on ``folder/<class>/*`` and save it with its threshold to ``out``."""
    base, _ = detectors.parse_name(method)
    if base not in SAVEABLE:
        raise ValueError(f"`tagood fit` saves {', '.join(SAVEABLE)} detectors; '{base}' cannot be saved yet")
    src = FolderSource(folder)
    if not src.class_names:
        raise ValueError(f"{folder}: `tagood fit` needs one sub-folder per IND class")
    bb = build_backbone({"name": backbone}, device=device)
    fs = extract_split(src, bb, cache, split="fit", fields=FIELDS).to_featureset(FIELDS)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(fs), bool)
    held[rng.choice(len(fs), size=max(1, int(holdout * len(fs))), replace=False)] = True
    fit_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
    det = detectors.create(method)
    det.fit(_subset(fs, fit_idx), _context(bb, src.class_names, device, seed))
    s_held = det.score(_subset(fs, held_idx))
    threshold = float(np.quantile(s_held, 0.95, method="higher"))
    d = det.save(out)
    meta = {"method": method, "backbone": {"name": backbone, "id": bb.id, "weights_hash": bb.weights_hash},
            "classes": src.class_names, "threshold": threshold, "n_train": int(len(fit_idx)), "n_heldout": int(len(held_idx))}
    (Path(d) / "tagood.json").write_text(json.dumps(meta, indent=1))
    return meta


def _subset(fs: Any, idx: np.ndarray) -> Any:
    from tagood.types import TagAttention

    return fs.with_(labels=fs.labels[idx], features=fs.features[idx], tokens=fs.tokens.select(idx), tag_probs=fs.tag_probs[idx],
                    tag_attention=TagAttention(fs.tag_attention.ids[idx], fs.tag_attention.maps[idx]),
                    paths=[fs.paths[i] for i in idx] if fs.paths else None)


def score_images(detector_dir: str | Path, inputs: list[str | Path], out: str | Path | None = None, cache: str | Path | None = None,
                 device: str = "cpu") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Score image files / folders with a saved detector; returns (rows, failed) and writes a CSV when ``out`` is given."""
    from tagood.tagood.detector import TagOOD

    d = Path(detector_dir)
    meta_path = d / "tagood.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{d} is not a detector saved by `tagood fit` (no tagood.json)")
    meta = json.loads(meta_path.read_text())
    det = TagOOD.load(d, device=device)
    bb = build_backbone({"name": meta["backbone"]["name"]}, device=device)
    if bb.weights_hash != meta["backbone"]["weights_hash"]:
        raise ValueError(f"{d} was fitted with backbone weights {meta['backbone']['weights_hash']}, these are {bb.weights_hash}")
    files: list[str] = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += [s.ident for s in FolderSource(p).samples]
        else:
            files.append(str(p))
    src: ImageSource = FilesSource(files)
    reader = extract_split(src, bb, cache, split="score", fields=FIELDS)
    fs = reader.to_featureset(FIELDS)
    scores = det.score(fs) if len(fs) else np.zeros(0)
    rows = [{"path": p, "score": float(s), "is_ood": bool(s > meta["threshold"])} for p, s in zip(fs.paths or [], scores)]
    if out is not None:
        with open(out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "score", "is_ood"])
            w.writeheader()
            w.writerows(rows)
    return rows, reader.failed
