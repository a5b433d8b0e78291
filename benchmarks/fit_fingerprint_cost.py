"""Benchmark: the cost of the training fingerprint ``Detector.fit`` records, extrapolated to ImageNet-1K at RAM's width.

``Detector.fit`` ends with :func:`tagood.detectors.manifest.fingerprint` of the training split (recorded as
``fitted_on`` in a saved detector's manifest): one SHA-256 pass over the first dense field it holds (the pooled
features), memoised per array within a process. A detector that learns from the split (KNN) still makes that pass;
a training-free one (MSP, Energy) records the split without hashing its arrays. Method: time the full fingerprint,
MSP's whole fit (given the IND head; the cheapest fit a bench runs) and KNN's fingerprint-included fit, on
``N x 1536`` float32 features for each ``--rows`` (best of ``--repeats``, the memo cleared before each), and
extrapolate linearly in bytes (SHA-256 is one linear pass) to ImageNet-1K's 1,281,167 x 1,536 float32 (7.9 GB).
Printed last: the full fingerprint / MSP's fit with it (what MSP's fit paid before) and MSP's fit now / MSP's fit
with it, at the largest N.

    python benchmarks/fit_fingerprint_cost.py [--rows 20000 --rows 40000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

IMAGENET_TRAIN, WIDTH = 1_281_167, 1536


def _best(fn: Any, repeats: int) -> float:
    from tagood.detectors import manifest

    ts = []
    for _ in range(repeats):
        manifest._FP_MEMO.clear()  # a fresh array each time, as a first fit sees it
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tagood
    from tagood.core.context import Context
    from tagood.detectors import manifest
    from tagood.detectors.head import fit_head, with_head_logits

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, action="append", help="training rows to time (default 20000 and 40000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the result file here")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    runs = []
    for n in a.rows or [20_000, 40_000]:
        x = rng.standard_normal((n, WIDTH), dtype=np.float32)
        y = np.arange(n) % 100
        fs = tagood.FeatureSet(features=x, labels=y)
        head = fit_head(tagood.FeatureSet(features=x[:2000], labels=y[:2000]), epochs=5)
        fsl = with_head_logits(fs, head)
        fp = _best(lambda: manifest.fingerprint(fs, None), a.repeats)  # noqa: B023
        msp = _best(lambda: tagood.create("msp").fit(fsl, Context(head=head)), a.repeats)  # noqa: B023
        hashes = "sha256" in (tagood.create("msp").fit(fsl, Context(head=head)).fitted_on or {})
        runs.append({"rows": n, "bytes": x.nbytes, "fingerprint_s": fp, "msp_fit_s": msp, "msp_fit_hashes": hashes,
                     "GB_per_s": x.nbytes / fp / 1e9})
        print(f"N={n}: fingerprint {fp:.3f} s ({x.nbytes / fp / 1e9:.2f} GB/s), MSP fit with the head {msp:.3f} s "
              f"({'with' if hashes else 'without'} the array hash)")
    last = runs[-1]
    full = IMAGENET_TRAIN * WIDTH * 4
    scale = full / last["bytes"]
    with_hash = last["msp_fit_s"] + (0.0 if last["msp_fit_hashes"] else last["fingerprint_s"])
    est = {"imagenet_bytes": full, "fingerprint_s": scale * last["fingerprint_s"], "msp_fit_s": scale * last["msp_fit_s"],
           "msp_fit_with_hash_s": scale * with_hash}
    before, now = last["fingerprint_s"] / with_hash, last["msp_fit_s"] / with_hash
    print(f"ImageNet-1K (1,281,167 x 1,536 float32, {full / 1e9:.1f} GB), extrapolated linearly: fingerprint "
          f"{est['fingerprint_s']:.1f} s, MSP fit {est['msp_fit_s']:.1f} s (with the hash: {est['msp_fit_with_hash_s']:.1f} s)")
    print(f"full fingerprint / MSP fit with it: {before:.2f}; MSP fit now / MSP fit with it: {now:.3f}")
    out = {"benchmark": "fit_fingerprint_cost", "runs": runs, "imagenet_estimate": est,
           "fingerprint_share_of_msp_fit_with_hash": before, "msp_fit_now_over_with_hash": now,
           "platform": platform.platform(), "note": "loaded machine: preliminary"}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
