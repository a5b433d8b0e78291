"""ODIN scoring with glibc's default malloc thresholds vs :func:`tagood.runtime.alloc.keep_large_allocations` (what the
CLI sets at start), each in a fresh process, alternated ``--repeats`` times in one run.

The work: ODIN (T = 1000, eps = 0.0014) through :class:`tagood.detectors.head.Classifier` (EfficientNet-Lite0's lean
gradient graph + its onnxruntime engine) on ``--images`` real ``scenes`` test images, preprocessed before the
clock starts, at ODIN's default batch size; best of three passes per process. The baseline is the same code
with glibc's defaults. Prints images/s of each run, whether the scores are identical, and last the ratio of
the medians ``heap / default`` (> 1 = faster with the heap).

    .venv/bin/python benchmarks/malloc_thresholds.py [--images 96] [--repeats 2] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

WORK = """
import json, sys, time
import numpy as np
if sys.argv[1] == "heap":
    from tagood.runtime.alloc import keep_large_allocations
    assert keep_large_allocations()
from tagood.backbones.efficientnet import EfficientNetLite0
from tagood.core.context import Context
from tagood.data.scenes import scene_splits
from tagood.detectors.odin import ODIN
from tagood.core.featureset import FeatureSet
from tagood.detectors.head import Classifier
from tagood.core.images import ImageStream
from tagood.core.types import LinearHead
n, bs = int(sys.argv[2]), (int(sys.argv[3]) or None)
bb = EfficientNetLite0()
src = scene_splits(n_train_per_class=1, n_test_per_class=-(-n // 6), n_ood=6)["test"]
x = np.stack([bb.preprocess(src.load(i)) for i in range(n)])
rng = np.random.default_rng(0)
head = LinearHead(rng.standard_normal((6, 1280)).astype(np.float32) * 0.05, np.zeros(6, np.float32))
data = FeatureSet(labels=np.zeros(n, dtype=np.int64), images=ImageStream(x))
det = ODIN(batch_size=bs).fit(data, Context(model=Classifier(bb, head), device="cpu"))
det.score(FeatureSet(images=ImageStream(x[:8])))
best, scores = float("inf"), None
for _ in range(3):
    t = time.perf_counter()
    scores = det.score(data)
    best = min(best, time.perf_counter() - t)
print(json.dumps({"img_s": n / best, "scores": scores.tolist()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=0, help="ODIN's batch size (0: its default)")
    args = ap.parse_args()
    rates: dict[str, list[float]] = {"default": [], "heap": []}
    scores: dict[str, list[float]] = {}
    for r in range(args.repeats):
        for mode in ("default", "heap"):
            out = subprocess.run([sys.executable, "-c", WORK, mode, str(args.images), str(args.batch_size)], check=True,
                                 capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            rates[mode].append(res["img_s"])
            scores[mode] = res["scores"]
            print(f"{mode:7s} run {r + 1}: {res['img_s']:.1f} images/s", flush=True)
    print(f"scores identical: {scores['default'] == scores['heap']}")
    print(f"ratio heap / default: {statistics.median(rates['heap']) / statistics.median(rates['default']):.2f}")


if __name__ == "__main__":
    main()
