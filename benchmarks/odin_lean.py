"""ODIN's cost on EfficientNet-Lite0, three ways, on real ``scenes`` images, in one run:

* ``before`` (the baseline: the code before this benchmark): the full feature graph (every block's
  FeatureNorm, the 1000-class logits, BatchNorm as separate operators) for both passes, batch 32;
* ``lean``: the lean differentiable graph (:mod:`tagood.backbones.lite_pooled`, BatchNorm folded,
  pooled features only) for both passes, batch 32;
* ``now`` (the default): :class:`tagood.detectors.head.Classifier` -- the lean graph for the gradient pass, the
  onnxruntime engine for the perturbed pass (``Classifier.predict``), ODIN's default batch size (8 on
  the CPU; 16 until the convolutions took their "same" padding inside, and batches of 8 measured faster).

All through the real :class:`tagood.detectors.odin.ODIN` (T = 1000, eps = 0.0014) with the same random
6-class head, timed alternately ``--repeats`` times; medians compared. Printed last: ``ratio before /
now`` (> 1 = faster now), and each variant's largest score difference from ``before`` relative to the
scores' spread.

    .venv/bin/python benchmarks/odin_lean.py [--images 96] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from tagood.backbones.efficientnet import EfficientNetLite0, LiteFeatures, load_lite
from tagood.backbones.lite_pooled import LitePooled
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.data.scenes import scene_splits
from tagood.detectors.odin import ODIN


class _FullPooled(torch.nn.Module):
    """The full graph's pooled output (what ``torch_module()`` returned before the lean graph)."""

    def __init__(self, f: LiteFeatures) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x.contiguous(memory_format=torch.channels_last))[1]


def main() -> None:
    from tagood.core.images import ImageStream
    from tagood.core.types import LinearHead
    from tagood.detectors.head import Classifier

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    bb = EfficientNetLite0()
    src = scene_splits(n_train_per_class=1, n_test_per_class=max(1, args.images // 6), n_ood=6)["test"]
    x = np.stack([bb.preprocess(src.load(i)) for i in range(min(args.images, len(src)))])
    rng = np.random.default_rng(0)
    head = LinearHead(rng.standard_normal((6, 1280)).astype(np.float32) * 0.05, np.zeros(6, np.float32))
    lin = torch.nn.Linear(1280, 6)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(head.weight))
        lin.bias.zero_()
    model = load_lite(bb.variant)
    variants = {
        "before": (torch.nn.Sequential(_FullPooled(LiteFeatures(model).eval().to(memory_format=torch.channels_last)),
                                       lin).eval(), 32),
        "lean": (torch.nn.Sequential(LitePooled(model), lin).eval(), 32),
        "now": (Classifier(bb, head), None),
    }
    data = FeatureSet(labels=np.zeros(len(x), dtype=np.int64), images=ImageStream(x))
    times: dict[str, list[float]] = {k: [] for k in variants}
    scores: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, (g, bs) in variants.items():
            det = ODIN(batch_size=bs).fit(data, Context(model=g, device="cpu"))
            t = time.perf_counter()
            scores[name] = det.score(data)
            times[name].append(time.perf_counter() - t)
    spread = float(scores["before"].max() - scores["before"].min())
    for name, ts in times.items():
        med = statistics.median(ts)
        diff = float(np.abs(scores[name] - scores["before"]).max()) / spread
        print(f"{name:6s}: {len(x)} images, median {med:.2f} s ({len(x) / med:.1f} img/s), score difference / spread {diff:.1e}; "
              f"runs {[round(t, 2) for t in ts]}")
    print(f"ratio before / lean: {statistics.median(times['before']) / statistics.median(times['lean']):.2f}")
    ratio = statistics.median(times["before"]) / statistics.median(times["now"])
    print(f"ratio before / now (ODIN time, >1 = faster now): {ratio:.2f}")


if __name__ == "__main__":
    main()
