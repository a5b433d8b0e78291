"""Where do TagOOD's object tokens fall on the `fashion-clutter` benchmark? (README, "TagOOD on the embedded benchmarks")

Fits CS (TagOOD's vocabulary + decomposition, no projector) on the benchmark's IND train split,
then for every IND test canvas compares the kept tokens (tau = 0.5 by default) with the object's
box from the canvas layout: precision (kept cells overlapping the box), the chance rate (all cells
overlapping it) and recall (box cells kept); and counts the `clutter-only` canvases (no object)
that still get a kept IND tag, i.e. where TagOOD's no-tag rule cannot fire.

    python scripts/clutter_analysis.py [--tau 0.5] [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np

from tagood.backbones.efficientnet import CROP, RESIZE
from tagood.bench import runner
from tagood.bench.config import builtin
from tagood.detectors.tagood.decompose import token_mask


def cell_boxes(grid: int = 7) -> np.ndarray:
    """(grid*grid, 4) pixel boxes (x0, y0, x1, y1) of the token cells in the 224x224 crop, row-major."""
    s = CROP / grid
    return np.array([(c * s, r * s, (c + 1) * s, (r + 1) * s) for r in range(grid) for c in range(grid)])


def object_cells(box: tuple[int, int, int, int], canvas: int) -> np.ndarray:
    """Boolean (49,): cells that overlap the object box after the backbone's resize (shorter side 256) + centre crop."""
    scale = RESIZE / canvas
    off = (RESIZE - CROP) / 2
    x0, y0, x1, y1 = (v * scale - off for v in box)
    cells = cell_boxes()
    return (cells[:, 0] < x1) & (cells[:, 2] > x0) & (cells[:, 1] < y1) & (cells[:, 3] > y0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tau", type=float, default=0.5)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    cfg = builtin("fashion-clutter", quick=a.quick)
    state, (cs,) = runner.prepare(cfg, methods=[f"cs[tau={a.tau}]"], progress=False)  # extract (cached) + head
    cs.fit(state.splits["train"].features, state.context)
    test = state.splits["test"]
    fs, src = test.features, test.source
    keep = cs.kept_tags(fs)
    mask, has = token_mask(fs.tag_attention.maps, keep, a.tau)
    kept = inside = box_cells = hit = 0
    for j, i in enumerate(test.reader.indices):
        obj = object_cells(src.layout(int(i))["object"], src.canvas)
        m = mask[j]
        kept += int(m.sum())
        inside += int((m & obj).sum())
        box_cells += int(obj.sum())
        hit += int((m & obj).sum())
    n = len(test.reader.indices)
    print(f"IND vocabulary: {[cs.vocab._tag(t) for t in cs.vocab.tags]}")
    print(f"IND test canvases: {n}; {100 * has.mean():.1f}% have a kept IND tag")
    print(f"kept tokens per canvas at tau={a.tau}: {kept / n:.1f} of 49")
    print(f"precision (kept cells overlapping the object box): {100 * inside / max(kept, 1):.1f}%")
    print(f"chance (all cells overlapping the box): {100 * box_cells / (49 * n):.1f}%")
    print(f"recall (box cells kept): {100 * hit / max(box_cells, 1):.1f}%")
    only = state.splits["clutter-only"].features
    print(f"clutter-only canvases with a kept IND tag: {100 * cs.kept_tags(only).any(axis=1).mean():.1f}%")


if __name__ == "__main__":
    main()
