"""Decomposition diagnostics: what the tag-based detectors keep of each image, and whether it is the object.

TagOOD (Li et al., ACM MM 2024, section 3.3) cuts an image's tokens down to the *object* tokens: the
tokens where the attention of a kept IND tag is high. Whether a weak TagOOD result comes from the
tagger (no tag, wrong tag, attention on the background) or from the projector cannot be read from
the OOD metrics. These diagnostics measure the decomposition itself, per (method, split):

* ``no_tag_fraction``: fraction of the split's images with no kept IND tag. Under the paper's rule
  (``no_tag=ood``) they score the most-OOD score; on the IND test set more than 5% of them make FPR95
  degenerate (the threshold that accepts 95% of IND must accept the tie at the top, i.e. every OOD image).
* ``tokens_per_image``: mean number of kept tokens (prefix tokens such as RAM's pooled one included)
  over the images **with** a kept tag; ``token_fraction``: the same divided by the image's token count.
* Where the split's source knows the true object region (``ImageSource.object_mask``) and the
  backbone its token layout (``token_geometry``): ``mask_precision`` (kept tokens that are object),
  ``mask_recall`` (object tokens that are kept) and ``mask_iou`` of the kept spatial tokens against the
  object tokens. A token is *object* when at least half of its grid cell is object pixels (the pixel
  mask is mapped through the backbone's crop box onto its grid, with exact fractional pixel areas).
  Prefix tokens are left out.

  Averaging: **micro** (token counts pooled over the images, then one ratio), over the images that
  have a kept tag and at least one object token; ``mask_images`` says how many. ``object_token_fraction``
  is the share of those images' spatial tokens that are object: the precision of keeping tokens at random. Images whose object
  covers no token (clutter-only scenes, an empty mask, or an object smaller than half a cell) have
  no recall or IoU; they enter only through ``object_fraction`` (fraction of the split's images with at
  least one object token) and ``distractor_fraction``.
* ``distractor_fraction`` (where ``ImageSource.distractor_mask`` exists): fraction of the kept spatial
  tokens (images with a kept tag, pooled) that lie on distractor objects (same half-cell rule).

All values are fractions in [0, 1] (not percent). Scores elsewhere stay higher = more OOD; nothing
here changes a score.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

import numpy as np

from tagood.core.featureset import FeatureSet

log = logging.getLogger(__name__)

#: more than this fraction of IND test images without a kept tag makes FPR95 degenerate (rule ``ood``)
NO_TAG_WARN_FRACTION = 0.05
#: a token is object (distractor) when at least this fraction of its grid cell is object (distractor) pixels
CELL_FRACTION = 0.5
Box = tuple[float, float, float, float]


class TokenMasker(Protocol):
    """A tag-based detector (``tagood.detectors.tagood.TagDetector``): which tokens its decomposition keeps."""

    def token_masks(self, data: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
        """(mask (N,T) bool of kept tokens, has_tag (N,) bool)."""
        ...


def _axis_overlap(lo: float, hi: float, cells: int, pixels: int) -> np.ndarray:
    """(cells, pixels): length of the overlap of pixel p = [p, p+1) with cell c of ``[lo, hi)`` split
    into ``cells`` equal parts."""
    edges = lo + (hi - lo) * np.arange(cells + 1) / cells
    p = np.arange(pixels, dtype=np.float64)
    a = np.maximum(edges[:-1, None], p[None, :])
    b = np.minimum(edges[1:, None], p[None, :] + 1.0)
    return np.maximum(b - a, 0.0)


def cell_coverage(mask: np.ndarray, box: Box, grid: tuple[int, int]) -> np.ndarray:
    """(rows, cols) fraction of each token grid cell covered by True pixels of ``mask`` (H, W).

    ``box = (left, top, right, bottom)`` is the region of the image, in its pixels, that the backbone
    sees (its crop); it is cut into ``grid = (rows, cols)`` equal cells, row-major like the tokens.
    Pixels are unit squares; partial pixels at cell borders count by their area. Parts of a cell
    outside the image count as not covered."""
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"a pixel mask must be 2-D (H, W), got shape {m.shape}")
    rows, cols = grid
    left, top, right, bottom = box
    if right <= left or bottom <= top:
        raise ValueError(f"empty crop box {box}")
    wy = _axis_overlap(top, bottom, rows, m.shape[0])  # (rows, H)
    wx = _axis_overlap(left, right, cols, m.shape[1])  # (cols, W)
    area = ((bottom - top) / rows) * ((right - left) / cols)
    return (wy @ m @ wx.T) / area


def mask_to_tokens(mask: np.ndarray, box: Box, grid: tuple[int, int], min_fraction: float = CELL_FRACTION) -> np.ndarray:
    """(rows * cols,) bool, row-major: grid cells at least ``min_fraction`` covered by ``mask``."""
    return (cell_coverage(mask, box, grid) >= min_fraction - 1e-9).reshape(-1)


@dataclass
class SplitMasks:
    """Per-image token labels of one split: ``object`` / ``distractor`` (N, rows*cols) bool, or None."""

    object: np.ndarray | None
    distractor: np.ndarray | None
    grid: tuple[int, int] | None
    n_prefix: int
    note: str = ""


def split_masks(source: Any, indices: Sequence[int] | np.ndarray, backbone: Any) -> SplitMasks:
    """Object / distractor token labels of the images ``indices`` of ``source`` (the feature rows'
    source indices), or a note saying why there are none. Masks come from ``source.object_mask(i)`` /
    ``source.distractor_mask(i)`` (bool (H, W) at the loaded image's resolution, or None)."""
    geometry = getattr(backbone, "token_geometry", None)
    obj_fn, dis_fn = getattr(source, "object_mask", None), getattr(source, "distractor_mask", None)
    if obj_fn is None or not len(indices) or obj_fn(int(indices[0])) is None:
        return SplitMasks(None, None, None, 0, "no object masks")
    if geometry is None:
        return SplitMasks(None, None, None, 0, f"backbone {getattr(backbone, 'id', backbone)} has no token_geometry")
    obj_rows: list[np.ndarray] = []
    dis_rows: list[np.ndarray] | None = [] if dis_fn is not None else None
    grid, n_prefix = None, 0
    for i in indices:  # both masks of an image together (a source may cache its scene layout per image)
        m = np.asarray(obj_fn(int(i)), dtype=bool)
        box, grid, n_prefix = geometry(m.shape[1], m.shape[0])
        obj_rows.append(mask_to_tokens(m, box, grid))
        d = dis_fn(int(i)) if dis_fn is not None and dis_rows is not None else None
        if d is None:
            dis_rows = None
        elif dis_rows is not None:
            dis_rows.append(mask_to_tokens(np.asarray(d, dtype=bool), box, grid))
    out = {"object": np.stack(obj_rows), "distractor": np.stack(dis_rows) if dis_rows else None}
    return SplitMasks(out["object"], out["distractor"], grid, int(n_prefix))


def oracle_tokens(source: Any, indices: Sequence[int] | np.ndarray, backbone: Any) -> np.ndarray | None:
    """(N, T) bool: the tokens of what stands in the object's place in each image (``decompose="oracle"``).

    The pixel mask is ``source.focus_mask(i)`` where the source has one (the scenes: the IND or near-OOD object,
    the far item, the clutter scene's stand-in distractor), else ``source.object_mask(i)``; a token is marked
    when at least half of its grid cell is mask pixels (:func:`mask_to_tokens`). Prefix tokens (RAM's pooled one)
    are not marked. None when the source has no masks or the backbone no ``token_geometry``.

    Args:
        source: the split's image source.
        indices: the feature rows' source indices.
        backbone: the backbone whose tokens the features hold.
    Returns:
        The token mask, or None.
    """
    geometry = getattr(backbone, "token_geometry", None)
    fn = getattr(source, "focus_mask", None) or getattr(source, "object_mask", None)
    if fn is None or geometry is None or not len(indices) or fn(int(indices[0])) is None:
        return None
    rows = []
    for i in indices:
        m = np.asarray(fn(int(i)), dtype=bool)
        box, grid, n_prefix = geometry(m.shape[1], m.shape[0])
        rows.append(np.concatenate([np.zeros(int(n_prefix), dtype=bool), mask_to_tokens(m, box, grid)]))
    return np.stack(rows)


def with_oracle_tokens(data: FeatureSet, source: Any, indices: Sequence[int] | np.ndarray | None,
                       backbone: Any) -> FeatureSet:
    """``data`` with its oracle tokens (:func:`oracle_tokens`) as ``extra["oracle_tokens"]``, or unchanged (with a
    log line) when its source knows no masks.

    Args:
        data: a split's features.
        source: its image source.
        indices: the rows' source indices (None: ``range(len(data))``).
        backbone: the backbone of the features.
    Returns:
        The feature set, with the oracle tokens where they exist.
    """
    from tagood.detectors.tagood.decompose import ORACLE_FIELD

    tok = oracle_tokens(source, indices if indices is not None else range(len(data)), backbone)
    if tok is None:
        log.info("%s: no oracle tokens (the source knows no object masks, or the backbone no token grid)", data.name)
        return data
    return data.with_(extra={**data.extra, ORACLE_FIELD: tok})


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def decomposition_row(method: str, split: str, kept: np.ndarray, has_tag: np.ndarray,
                      masks: SplitMasks | None = None) -> dict[str, Any]:
    """One diagnostics row from a detector's kept-token mask (N, T) and has_tag (N,) on a split."""
    kept = np.asarray(kept, dtype=bool)
    has = np.asarray(has_tag, dtype=bool)
    n, t = kept.shape
    row: dict[str, Any] = {"method": method, "split": split, "n_images": int(n),
                           "no_tag_fraction": float(1.0 - has.mean()) if n else None}
    per = kept[has].sum(axis=1)
    row["tokens_per_image"] = float(per.mean()) if len(per) else None
    row["token_fraction"] = float(per.mean() / t) if len(per) else None
    if masks is None or masks.object is None:
        if masks is not None and masks.note:
            row["mask_note"] = masks.note
        return row
    g = masks.object.shape[1]
    if t - masks.n_prefix != g:
        row["mask_note"] = f"{t} tokens do not match the backbone's {masks.grid} grid + {masks.n_prefix} prefix tokens"
        return row
    spatial = kept[:, masks.n_prefix:]
    obj = masks.object
    has_obj = obj.any(axis=1)
    row["object_fraction"] = float(has_obj.mean())
    sel = has & has_obj
    k, o = spatial[sel], obj[sel]
    tp = float((k & o).sum())
    fp = float((k & ~o).sum())
    fn = float((~k & o).sum())
    row.update(mask_images=int(sel.sum()), mask_precision=_ratio(tp, tp + fp), mask_recall=_ratio(tp, tp + fn),
               mask_iou=_ratio(tp, tp + fp + fn), object_token_fraction=_ratio(float(o.sum()), float(o.size)))
    if masks.distractor is not None:
        kd = spatial[has]
        row["distractor_fraction"] = _ratio(float((kd & masks.distractor[has]).sum()), float(kd.sum()))
    return row


def token_masks(det: TokenMasker, data: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    """``det.token_masks`` over a split chunk by chunk (a streamed split is never loaded whole)."""
    parts = [det.token_masks(chunk) for chunk in data.iter_chunks()]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def is_tag_based(det: object) -> TypeGuard[TokenMasker]:
    """The detector exposes its decomposition (``token_masks``: a :class:`TokenMasker`)."""
    return callable(getattr(det, "token_masks", None))


@dataclass
class SplitInput:
    """What the diagnostics need of one split: its features, source and the features' source indices."""

    features: FeatureSet
    source: Any = None
    indices: Sequence[int] | np.ndarray | None = None


def diagnose(dets: Iterable[tuple[str, object]], splits: Mapping[str, SplitInput], backbone: Any) -> list[dict[str, Any]]:
    """One row per (tag-based detector, split); each split's masks are mapped onto tokens once. Detectors that are
    not tag-based (:func:`is_tag_based`) are skipped."""
    maskers = [(name, d) for name, d in dets if is_tag_based(d)]
    if not maskers:
        return []
    masks = {name: split_masks(sp.source, sp.indices if sp.indices is not None else range(len(sp.features)), backbone)
             if sp.source is not None else None for name, sp in splits.items()}
    rows = []
    for method, d in maskers:
        for name, sp in splits.items():
            kept, has = token_masks(d, sp.features)
            rows.append(decomposition_row(method, name, kept, has, masks[name]))
    return rows


def no_tag_rule(det: Any) -> str | None:
    """The detector's rule for images without a kept tag: ``"ood"`` (paper: most-OOD score),
    ``"fallback"`` (scored with all tokens), ``"none"`` for a tag-based detector that scores them like
    any image (``tagscore``: the tag probabilities alone), None for a detector without tags."""
    from tagood.detectors.tagood import CentreDetector

    if not is_tag_based(det):
        return None
    if not isinstance(det, CentreDetector):
        return "none"
    rule = getattr(det, "no_tag", None)  # "auto" is resolved to "ood" / "fallback" at fit
    return str(rule) if rule in ("ood", "fallback") else "ood"


def no_tag_warnings(rows: Sequence[Mapping[str, Any]], rules: Mapping[str, str | None] | None = None, ind_split: str = "test",
                    limit: float = NO_TAG_WARN_FRACTION) -> list[str]:
    """Warnings for methods where more than ``limit`` of the IND test images have no kept tag."""
    out = []
    for r in rows:
        f = r.get("no_tag_fraction")
        if r["split"] != ind_split or f is None or f <= limit:
            continue
        rule = (rules or {}).get(r["method"]) or "ood"
        what = {"ood": "they all get the most-OOD score (no_tag=ood), so the threshold that accepts 95% of IND accepts every "
                       "OOD image below it: FPR95 degenerates towards 100",
                "fallback": "they are scored with all their tokens (no_tag=fallback), so the decomposition does not act on them",
                }.get(rule, "the method scores them like any image, but its IND vocabulary does not cover them")
        out.append(f"{r['method']}: {100 * f:.1f}% of the IND test images have no kept IND tag (more than "
                   f"{100 * limit:.0f}%); {what}. A vocabulary with more tags per class or a lower tag threshold helps.")
    return out


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def summary(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Short log lines: one per row."""
    out = []
    for r in rows:
        s = (f"{r['method']} on {r['split']}: no tag {_pct(r['no_tag_fraction'])}%, "
             f"{'-' if r['tokens_per_image'] is None else format(r['tokens_per_image'], '.1f')} tokens/image "
             f"({_pct(r['token_fraction'])}%)")
        if r.get("mask_images"):
            s += (f"; object tokens: precision {_pct(r['mask_precision'])}% (at random {_pct(r['object_token_fraction'])}%), "
                  f"recall {_pct(r['mask_recall'])}%, IoU {_pct(r['mask_iou'])}% over {r['mask_images']} images")
        elif "mask_images" in r:
            s += "; no image with a kept tag has an object token"
        if r.get("distractor_fraction") is not None:
            s += f"; {_pct(r['distractor_fraction'])}% of kept tokens on distractors"
        out.append(s)
    return out


def log_summary(rows: Sequence[Mapping[str, Any]]) -> None:
    for line in summary(rows):
        log.info("decomposition: %s", line)
