"""Pictures of what the tagger kept: for a tag-based method (TagOOD, CS, (CE)+CS, Tag Score), a grid of
example images of the IND test set and of each OOD set with

* the tokens its decomposition keeps outlined (TagOOD, Li et al., ACM MM 2024, section 3.3: the tokens
  where the attention of a kept IND-vocabulary tag exceeds ``tau`` after min-max normalisation);
* the kept IND tags named (the tagger's tag names);
* the image's OOD score (higher = more OOD; an image without a kept IND tag under ``no_tag="ood"``
  gets the most-OOD score, shown as ``no tag: most OOD``);
* where the source knows it (``source.object_mask(i)``, e.g. the ``scenes`` benchmark), the true
  IND-object outline;
* the region the backbone sees (its centre crop, ``token_geometry``) dashed when it is not the whole
  image.

Token cells are mapped to pixels with the backbone's ``token_geometry(width, height)`` -> ``(box, (rows,
cols), n_prefix)``: ``box`` (left, top, right, bottom) is cut into ``rows x cols`` equal cells, row-major
like the tokens after the ``n_prefix`` non-spatial ones (RAM's pooled token). The masks are the
detector's own (``token_masks``, ``kept_tag_ids``): exactly what it scores. Nothing here changes a score.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeGuard

import numpy as np

from tagood.bench.diagnostics import SplitInput, TokenMasker, is_tag_based
from tagood.bench.report.plots import _figure, safe_name
from tagood.core.featureset import FeatureSet
from tagood.runtime.fileio import atomic_write_with

log = logging.getLogger(__name__)

#: scores at or above this are the no-tag score (``tagood.detectors.tagood.scores.NO_TAG_SCORE``, 1e12)
_NO_TAG_ABOVE = 1e11
KEPT_COLOR = "#ff7f0e"
OBJECT_COLOR = "#00c853"


def pick_examples(n: int, k: int, scores: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """``k`` sorted row indices of ``n``: at evenly spaced ranks of ``scores`` (lowest to highest score, so the
    row shows the split's range), or a seeded random choice without scores."""
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, np.int64)
    if scores is not None and len(scores) == n:
        order = np.argsort(np.asarray(scores, np.float64), kind="stable")
        ranks = np.floor((np.arange(k) + 0.5) * n / k).astype(np.int64)
        return np.sort(order[ranks])
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def cell_edges(kept: np.ndarray) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Outline of the kept cells of a (rows, cols) bool grid: the unit-cell sides between a kept cell and a
    not-kept (or outside) one, as ((x0, y0), (x1, y1)) in cell units (x = column, y = row, y down)."""
    k = np.asarray(kept, bool)
    rows, cols = k.shape
    pad = np.zeros((rows + 2, cols + 2), bool)
    pad[1:-1, 1:-1] = k
    segs = []
    for r, c in zip(*np.nonzero(k), strict=True):
        if not pad[r, c + 1]:      # above
            segs.append(((c, r), (c + 1, r)))
        if not pad[r + 2, c + 1]:  # below
            segs.append(((c, r + 1), (c + 1, r + 1)))
        if not pad[r + 1, c]:      # left
            segs.append(((c, r), (c, r + 1)))
        if not pad[r + 1, c + 2]:  # right
            segs.append(((c + 1, r), (c + 1, r + 1)))
    return [((float(a), float(b)), (float(x), float(y))) for (a, b), (x, y) in segs]


def _tag_text(ids: Sequence[int] | np.ndarray, names: Sequence[str] | None, limit: int = 3) -> str:
    if not len(ids):
        return "no kept IND tag"
    shown = [str(names[int(t)]) if names is not None and 0 <= int(t) < len(names) else f"tag {int(t)}" for t in ids[:limit]]
    shown = [s if len(s) <= 22 else s[:21] + "…" for s in shown]
    return "tags: " + ", ".join(shown) + (f" +{len(ids) - limit}" if len(ids) > limit else "")


def _score_text(s: float | None) -> str:
    if s is None or not np.isfinite(s):
        return "score -"
    return "no tag: most OOD" if s >= _NO_TAG_ABOVE else f"score {s:.4g}"


def _draw(ax: Any, image: Any, kept: np.ndarray, has_tag: bool, geometry: Any, obj: np.ndarray | None) -> None:
    """One example: the image, the crop box, the kept-token outline and the object outline."""
    from matplotlib.collections import LineCollection
    from matplotlib.patches import Rectangle

    w, h = image.size
    ax.imshow(np.asarray(image), interpolation="bilinear")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if geometry is not None:
        (left, top, right, bottom), (rows, cols), n_prefix = geometry
        if (left, top, right, bottom) != (0, 0, w, h):
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, linestyle="--", linewidth=0.8,
                                   edgecolor="white", alpha=0.8))
        spatial = np.asarray(kept[n_prefix:], bool)
        if has_tag and spatial.size == rows * cols:
            grid = spatial.reshape(rows, cols)
            cw, ch = (right - left) / cols, (bottom - top) / rows
            overlay = np.zeros((rows, cols, 4))
            overlay[grid] = (1.0, 0.5, 0.05, 0.22)
            ax.imshow(overlay, extent=(left, right, bottom, top), interpolation="nearest")
            segs = [[(left + x0 * cw, top + y0 * ch), (left + x1 * cw, top + y1 * ch)] for (x0, y0), (x1, y1) in cell_edges(grid)]
            ax.add_collection(LineCollection(segs, colors=KEPT_COLOR, linewidths=1.6))
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
    if obj is not None and obj.any():
        ax.contour(obj.astype(np.float32), levels=[0.5], colors=OBJECT_COLOR, linewidths=1.2)


class TagDecomposer(TokenMasker, Protocol):
    """A tag-based detector whose kept tokens and kept tags can be drawn (``tagood.detectors.tagood.TagDetector``)."""

    def kept_tag_ids(self, data: FeatureSet) -> list[np.ndarray]:
        """The kept IND tag ids of each sample."""
        ...


def draws_tags(det: object) -> TypeGuard[TagDecomposer]:
    """The detector exposes its kept tokens (``token_masks``) and its kept tags (``kept_tag_ids``)."""
    return is_tag_based(det) and callable(getattr(det, "kept_tag_ids", None))


def token_grid(method: str, det: object, splits: Mapping[str, SplitInput], backbone: Any, path: str | Path,
               scores: Mapping[str, np.ndarray] | None = None, per_split: int = 5, seed: int = 0) -> Path:
    """One PNG for a fitted tag-based detector: a row of ``per_split`` examples per split (module docstring),
    picked at evenly spaced score ranks and shown from the lowest to the highest score.
    ``splits``: name -> :class:`~tagood.bench.diagnostics.SplitInput` (features, source, the rows' source
    indices), the IND test split first; ``scores``: the method's per-split scores (higher = more OOD)."""
    if not draws_tags(det):
        raise ValueError(f"{method} is not a tag-based detector (it has no token_masks or no kept_tag_ids)")
    names = getattr(backbone, "tag_names", None)
    geometry_fn = getattr(backbone, "token_geometry", None)
    items = [(n, sp) for n, sp in splits.items() if sp.features is not None and len(sp.features)]
    if not items:
        raise ValueError(f"{method}: no split with samples to draw")
    fig = _figure(2.3 * per_split + 0.6, 2.75 * len(items) + 0.7)
    axes = np.atleast_2d(fig.subplots(len(items), per_split, squeeze=False))
    for r, (name, sp) in enumerate(items):
        s_all = None if scores is None or name not in scores else np.asarray(scores[name], np.float64)
        rows = pick_examples(len(sp.features), per_split, s_all, seed)
        sub = sp.features.subset(rows)
        masks, has = det.token_masks(sub)
        tag_ids = det.kept_tag_ids(sub)
        shown = np.argsort(s_all[rows], kind="stable") if s_all is not None else np.arange(len(rows))  # low to high score
        for c in range(per_split):
            ax = axes[r, c]
            if c >= len(rows):
                ax.axis("off")
                continue
            j = int(shown[c])
            i = int(rows[j])
            src_i = int(sp.indices[i]) if sp.indices is not None else i
            image = sp.source.load(src_i)
            obj = sp.source.object_mask(src_i) if sp.source is not None else None
            geometry = geometry_fn(*image.size) if geometry_fn is not None else None
            _draw(ax, image, masks[j], bool(has[j]), geometry, None if obj is None else np.asarray(obj, bool))
            score = None if s_all is None else float(s_all[i])
            ax.set_title(f"{_score_text(score)}\n{_tag_text(tag_ids[j], names)}", fontsize=7.5)
            if c == 0:
                ax.set_ylabel(name + (" (IND)" if r == 0 else ""), fontsize=9)
    tau = getattr(det, "tau", None)
    fig.suptitle(f"{method}: kept tokens (orange{f', tau={tau}' if tau is not None else ''}), kept IND tags and OOD score "
                 f"(higher = more OOD); green: true object outline; dashed: the tagger's crop", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(p, lambda tmp: fig.savefig(tmp, format="png"))  # a regular file, atomically (issue 23)
    return p


def write_token_grids(state: Any, out_dir: str | Path, per_split: int = 5) -> list[Path]:
    """``out_dir/tokens-<method>.png`` for every fitted tag-based method of a benchmark run
    (:class:`tagood.bench.runner.RunState`): rows = the IND test split, then each OOD set. A method whose
    picture fails is logged and left out (the run's results are already written)."""
    out = Path(out_dir)
    names = ["test", *state.config.ood]
    splits = {n: SplitInput(state.splits[n].features, state.splits[n].source,
                            state.splits[n].reader.indices if state.splits[n].reader is not None else None)
              for n in names if n in state.splits and state.splits[n].features is not None}
    paths = []
    for spec, det in state.fitted.items():
        if not is_tag_based(det):
            continue
        try:
            paths.append(token_grid(spec, det, splits, state.backbone, out / f"tokens-{safe_name(spec)}.png",
                                    state.scores.get(spec), per_split, state.config.seed))
        except Exception:  # a picture must not fail the run
            log.exception("token picture of %s failed", spec)
    return paths
