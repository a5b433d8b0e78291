"""Benchmark: all seven tagood metrics vs scikit-learn computing the same numbers on 10M scores.

Baseline: scikit-learn ``roc_auc_score`` + ``roc_curve`` (both FPR conventions) +
``average_precision_score`` x2 + ``precision_recall_curve`` and ``auc`` x2 (the trapezoid AUPR of
OpenOOD / pytorch-ood), run in the same process on the same scores. Prints the values of
both, checks they are identical, and prints the speed ratio (sklearn time / tagood time) last.

    python benchmarks/metrics_vs_sklearn.py [--n 10000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from tagood.metrics import ood_metrics


def sklearn_metrics(id_s: np.ndarray, ood_s: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    """The same seven numbers the usual way: one scikit-learn call per metric (7 sorts of N scores)."""
    y = np.concatenate([np.zeros(len(id_s)), np.ones(len(ood_s))])  # 1 = OOD
    s = np.concatenate([id_s, ood_s])
    fpr_i, tpr_i, _ = roc_curve(1 - y, -s)  # IND positive, ranked by the negated OOD score
    fpr_o, tpr_o, _ = roc_curve(y, s)  # OOD positive (OpenOOD v1.5)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "fpr95": float(fpr_i[np.argmax(tpr_i >= tpr)]),  # first ROC point with TPR >= 95%
        "fpr95_ood_pos": float(fpr_o[np.argmax(tpr_o >= tpr)]),
        "aupr_in": float(average_precision_score(1 - y, -s)),
        "aupr_out": float(average_precision_score(y, s)),
        "aupr_in_trapz": float(auc(*precision_recall_curve(1 - y, -s)[1::-1])),  # auc(recall, precision)
        "aupr_out_trapz": float(auc(*precision_recall_curve(y, s)[1::-1])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000_000, help="total number of scores (half IND, half OOD)")
    ap.add_argument("--decimals", type=int, default=4, help="round scores to this many decimals (ties)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best is reported")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    half = args.n // 2
    # rounded (default 4 decimals): realistic scores with many ties
    id_s = np.round(rng.normal(0.0, 1.0, half), args.decimals)
    ood_s = np.round(rng.normal(1.0, 1.2, args.n - half), args.decimals)

    def best(fn) -> tuple[float, dict[str, float]]:
        times, out = [], {}
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = fn(id_s, ood_s)
            times.append(time.perf_counter() - t)
        return min(times), out

    t_ours, ours = best(ood_metrics)
    t_sk, ref = best(sklearn_metrics)
    print(f"{'metric':<15}{'tagood':>22}{'scikit-learn':>22}")
    for k in ours:
        print(f"{k:<15}{ours[k]:>22.15f}{ref[k]:>22.15f}")
        tol = 1e-9 if k.startswith("fpr") else 1e-12
        if abs(ours[k] - ref[k]) > tol:
            raise SystemExit(f"MISMATCH in {k}: {ours[k]!r} vs {ref[k]!r}")
    print(f"n={args.n:,}  tagood {t_ours:.2f}s  scikit-learn {t_sk:.2f}s  (best of {args.repeats})")
    print(f"speedup_vs_sklearn: {t_sk / t_ours:.1f}x")


if __name__ == "__main__":
    main()
