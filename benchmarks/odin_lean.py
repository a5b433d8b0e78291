"""ODIN through the lean differentiable EfficientNet-Lite0 (BatchNorm folded, pooled features only,
:mod:`tagood.backbones.lite_pooled`) vs through the full feature graph (every block's FeatureNorm, the
1000-class logits, BatchNorm as separate operators), on real ``scenes`` images, in one run.

Both go through the real :class:`tagood.detectors.odin.ODIN` (T = 1000, eps = 0.0014, batch 32) with
the same random 6-class head; the two are timed alternately ``--repeats`` times and the medians
compared. Printed last: ``ratio full / lean`` (> 1 = the lean graph is faster) and the largest score
difference relative to the scores' spread.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/odin_lean.py [--images 96] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from tagood.backbones.efficientnet import EfficientNetLite0, LiteFeatures, load_lite
from tagood.backbones.lite_pooled import LitePooled
from tagood.data.scenes import scene_splits
from tagood.detectors.odin import ODIN
from tagood.featureset import FeatureSet
from tagood.context import Context


class _FullPooled(torch.nn.Module):
    """The full graph's pooled output (what ``torch_module()`` returned before the lean graph)."""

    def __init__(self, f: LiteFeatures) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x.contiguous(memory_format=torch.channels_last))[1]


class _Images:
    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, bs: int):
        for i in range(0, len(self.x), bs):
            yield self.x[i : i + bs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bb = EfficientNetLite0()
    src = scene_splits(n_train_per_class=1, n_test_per_class=max(1, args.images // 6), n_ood=6)["test"]
    x = np.stack([bb.preprocess(src.load(i)) for i in range(min(args.images, len(src)))])
    torch.manual_seed(0)
    head = torch.nn.Linear(1280, 6)
    model = load_lite(bb.variant)
    graphs = {"full": torch.nn.Sequential(_FullPooled(LiteFeatures(model).eval().to(memory_format=torch.channels_last)), head).eval(),
              "lean": torch.nn.Sequential(LitePooled(model), head).eval()}
    data = FeatureSet(labels=np.zeros(len(x), dtype=np.int64), images=_Images(x))
    times: dict[str, list[float]] = {k: [] for k in graphs}
    scores: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, g in graphs.items():
            det = ODIN().fit(data, Context(model=g, device="cpu"))
            t = time.perf_counter()
            scores[name] = det.score(data)
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"{name:5s}: {len(x)} images, median {statistics.median(ts):.2f} s ({len(x) / statistics.median(ts):.1f} img/s); runs {[round(t, 2) for t in ts]}")
    spread = float(scores["full"].max() - scores["full"].min())
    print(f"largest score difference / score spread: {float(np.abs(scores['full'] - scores['lean']).max()) / spread:.2e}")
    print(f"ratio full / lean (ODIN time, >1 = lean faster): {statistics.median(times['full']) / statistics.median(times['lean']):.2f}")


if __name__ == "__main__":
    main()
