"""AdaNeg stream scoring: batched (the released code's batch of 256; one memory write + one scoring pass per
batch, no per-image Python loop) vs one image at a time (the same stream fed as batches of one), measured side
by side in one run on ImageNet-sized label sets: 1,000 IND classes + 10,000 negative labels, 512-d embeddings
(CLIP ViT-B/16's width). Half of the stream lies near IND class prompts, half elsewhere, so both the IND and the
negative slots of the memory fill and get replaced.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/adaneg_batched_vs_single.py [--n 1024] [--batch 256]

The two runs are different (both valid) streams in the paper's sense -- a batch of one writes each image
before scoring the next -- so their scores are not compared; the figure is throughput. Prints the ratio last.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tagood.core.featureset import FeatureSet
from tagood.core.numeric import l2_normalize
from tagood.detectors.vlm.adaneg import AdaNeg
from tagood.detectors.vlm.neglabel import random_groups


def build(n_ind: int, n_neg: int, dim: int, seed: int = 0) -> AdaNeg:
    """An AdaNeg fitted by hand on random unit label embeddings (mining is not what is timed)."""
    rng = np.random.default_rng(seed)
    det = AdaNeg()
    det.class_names = [f"class{i}" for i in range(n_ind)]
    det.text = l2_normalize(rng.standard_normal((n_ind, dim))).astype(np.float32)
    det.neg_text = l2_normalize(rng.standard_normal((n_neg, dim))).astype(np.float32)
    det.neg_words = [f"neg{i}" for i in range(n_neg)]
    det.groups = random_groups(n_neg, det.ngroup, seed)
    det.fitted = True
    return det


def stream(det: AdaNeg, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    assert det.text is not None and det.neg_text is not None
    near = det.text[rng.integers(0, len(det.text), n // 2)] + 0.05 * rng.standard_normal((n // 2, det.text.shape[1]))
    far = rng.standard_normal((n - n // 2, det.text.shape[1]))
    return l2_normalize(np.concatenate([near, far])[rng.permutation(n)]).astype(np.float32)


def timed(det: AdaNeg, x: np.ndarray, batch: int) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    s = det.score_stream(FeatureSet(image_embeds=x[a : a + batch]) for a in range(0, len(x), batch))
    return time.perf_counter() - t, s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1024, help="stream length (images)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--ind", type=int, default=1000)
    ap.add_argument("--neg", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=512)
    a = ap.parse_args()
    det = build(a.ind, a.neg, a.dim)
    x = stream(det, a.n)
    timed(det, x[: 2 * a.batch], a.batch)  # warm-up
    t_b, s_b = timed(det, x, a.batch)
    mem_b = len(det.memory or [])
    t_1, s_1 = timed(det, x, 1)
    mem_1 = len(det.memory or [])
    assert np.isfinite(s_b).all() and np.isfinite(s_1).all()
    print(f"labels {a.ind} IND + {a.neg} negative, dim {a.dim}, stream of {a.n} images; memory cap "
          f"{(a.ind + a.neg) * (det.memleng - 1)} features (stored: batched {mem_b}, one-at-a-time {mem_1})")
    print(f"batched (batch {a.batch}): {t_b:.2f} s = {a.n / t_b:.0f} images/s")
    print(f"one image at a time:      {t_1:.2f} s = {a.n / t_1:.0f} images/s")
    print(f"batched vs one-at-a-time speed ratio: {t_1 / t_b:.1f}x")


if __name__ == "__main__":
    main()
