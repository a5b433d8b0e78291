"""Bootstrap confidence intervals for the OOD metrics (percentile bootstrap, Efron & Tibshirani 1993).

Each replicate resamples the IND test scores and every OOD set's scores with replacement,
independently and with their own sizes, and computes every metric of
:func:`tagood.metrics.ood_metrics`; one IND resample is shared by all OOD sets of a replicate, so
the interval of the *average* over OOD sets comes from the same replicates. The interval is the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates. Scores: higher = more OOD.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tagood.bench.report import METRICS
from tagood.metrics import ood_metrics


def bootstrap_intervals(s_id: np.ndarray, s_ood: Mapping[str, np.ndarray], n_boot: int = 1000, level: float = 0.95,
                        seed: int = 0) -> dict[str, dict[str, tuple[float, float]]]:
    """``{ood_set or "average": {metric: (low, high)}}`` in percent (like the results rows)."""
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not s_ood:
        raise ValueError("no OOD set to bootstrap")
    rng = np.random.default_rng(seed)
    s_id = np.asarray(s_id, dtype=np.float64)
    sets = {k: np.asarray(v, dtype=np.float64) for k, v in s_ood.items()}
    reps = {k: np.empty((n_boot, len(METRICS))) for k in [*sets, "average"]}
    for b in range(n_boot):
        rid = s_id[rng.integers(0, len(s_id), len(s_id))]
        for k, s in sets.items():
            m = ood_metrics(rid, s[rng.integers(0, len(s), len(s))])
            reps[k][b] = [100.0 * m[name] for name in METRICS]
        reps["average"][b] = np.mean([reps[k][b] for k in sets], axis=0)
    lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for k, r in reps.items():
        lo, hi = np.quantile(r, [lo_q, hi_q], axis=0)
        out[k] = {name: (float(lo[i]), float(hi[i])) for i, name in enumerate(METRICS)}
    return out


def add_intervals(results: dict[str, Any], scores: Mapping[str, Mapping[str, np.ndarray]], n_boot: int = 1000,
                  level: float = 0.95, seed: int = 0, ind: str = "test") -> dict[str, Any]:
    """Put ``row["ci"] = {"level", "n_boot", metric: [low, high], ...}`` on every row of ``results`` (in place)."""
    for method, per in scores.items():
        ci = bootstrap_intervals(per[ind], {k: v for k, v in per.items() if k != ind}, n_boot, level, seed)
        for row in results["rows"]:
            if row["method"] == method and row["ood"] in ci:
                row["ci"] = {"level": level, "n_boot": n_boot, **{k: list(v) for k, v in ci[row["ood"]].items()}}
    return results
