"""Bootstrap confidence intervals for the OOD metrics (percentile bootstrap, Efron & Tibshirani 1993),
and the paired bootstrap of two methods scored on the same samples (its public form:
:func:`tagood.bench.compare.compare`).

Each replicate resamples the IND test scores and every OOD set's scores with replacement,
independently and with their own sizes, and computes every metric of
:func:`tagood.metrics.ood_metrics`; one IND resample is shared by all OOD sets of a replicate, so
the interval of the *average* over OOD sets comes from the same replicates. The interval is the
``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates. Scores: higher = more OOD.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tagood.bench.report.writers import METRICS
from tagood.errors import ConfigError, InputError
from tagood.metrics import ood_metrics


def _check(n_boot: int, level: float, n_sets: int) -> None:
    if n_boot < 2:
        raise ConfigError(f"n_boot (--bootstrap) must be at least 2, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level (--level) must be in (0, 1), got {level}")
    if not n_sets:
        raise InputError("no OOD set to bootstrap: the scores hold the IND split only")


def _metric_table(s_id: np.ndarray, s_ood: list[np.ndarray]) -> np.ndarray:
    """``(len(s_ood) + 1, len(METRICS))`` in percent: one row per OOD set, then their average."""
    rows = [[100.0 * m[name] for name in METRICS] for m in (ood_metrics(s_id, s) for s in s_ood)]
    return np.vstack([rows, np.mean(rows, axis=0)])


def bootstrap_intervals(s_id: np.ndarray, s_ood: Mapping[str, np.ndarray], n_boot: int = 1000, level: float = 0.95,
                        seed: int = 0) -> dict[str, dict[str, tuple[float, float]]]:
    """Percentile-bootstrap intervals of every OOD metric of one method, per OOD set and on their average.

    Args:
        s_id: the IND test scores (higher = more OOD).
        s_ood: each OOD set's scores, by name.
        n_boot: bootstrap replicates (at least 2).
        level: confidence level, in (0, 1).
        seed: seed of the resampling.
    Returns:
        ``{ood_set or "average": {metric: (low, high)}}`` in percent (like the results rows).
    Raises:
        tagood.errors.ConfigError: ``n_boot`` or ``level`` out of range.
        tagood.errors.InputError: no OOD set.
    """
    _check(n_boot, level, len(s_ood))
    rng = np.random.default_rng(seed)
    s_id = np.asarray(s_id, dtype=np.float64)
    sets = [np.asarray(v, dtype=np.float64) for v in s_ood.values()]
    reps = np.empty((n_boot, len(sets) + 1, len(METRICS)))
    for b in range(n_boot):
        rid = s_id[rng.integers(0, len(s_id), len(s_id))]
        reps[b] = _metric_table(rid, [s[rng.integers(0, len(s), len(s))] for s in sets])
    lo, hi = np.quantile(reps, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
    return {k: {name: (float(lo[i, j]), float(hi[i, j])) for j, name in enumerate(METRICS)}
            for i, k in enumerate([*s_ood, "average"])}


def add_intervals(results: dict[str, Any], scores: Mapping[str, Mapping[str, np.ndarray]], n_boot: int = 1000,
                  level: float = 0.95, seed: int = 0, ind: str = "test") -> dict[str, Any]:
    """Put ``row["ci"] = {"level", "n_boot", metric: [low, high], ...}`` on every row of ``results`` (in place).

    Args:
        results: a results document (``tagood bench`` / ``tagood metrics``) whose rows name ``method`` and ``ood``.
        scores: per-sample scores, ``{method: {split: scores}}`` (higher = more OOD).
        n_boot: bootstrap replicates; ``level``: confidence level; ``seed``: seed of the resampling.
        ind: the name of the IND test split in ``scores``.
    Returns:
        ``results``, with the intervals added.
    """
    for method, per in scores.items():
        ci = bootstrap_intervals(per[ind], {k: v for k, v in per.items() if k != ind}, n_boot, level, seed)
        for row in results["rows"]:
            if row["method"] == method and row["ood"] in ci:
                row["ci"] = {"level": level, "n_boot": n_boot, **{k: list(v) for k, v in ci[row["ood"]].items()}}
    return results


def paired_difference(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], n_boot: int = 1000, level: float = 0.95,
                      seed: int = 0, ind: str = "test") -> dict[str, dict[str, dict[str, float]]]:
    """Method A minus method B on the same samples (a paired bootstrap); the typed public form is
    :func:`tagood.bench.compare.compare`.

    Each replicate draws one set of sample indices per split and applies it to both methods' scores, so what the
    two share cancels out; ``p`` is the two-sided bootstrap p-value of "no difference" (twice the smaller tail of
    the replicates' differences around 0).

    Args:
        a: method A's scores, ``{split: scores}`` (higher = more OOD), the IND split ``ind`` included.
        b: method B's scores on the same splits and samples.
        n_boot: bootstrap replicates; ``level``: confidence level; ``seed``: seed of the resampling.
        ind: the name of the IND test split.
    Returns:
        ``{ood_set or "average": {metric: {"a", "b", "diff", "low", "high", "p"}}}`` in percent.
    Raises:
        tagood.errors.InputError: the two were not scored on the same splits and samples.
    """
    if set(a) != set(b) or ind not in a:
        raise InputError(f"the two methods must be scored on the same splits including {ind!r}: {sorted(a)} vs {sorted(b)}")
    for k in a:
        if len(a[k]) != len(b[k]):
            raise InputError(f"split {k!r}: {len(a[k])} vs {len(b[k])} scores; a paired comparison needs the same samples")
    sets = [k for k in a if k != ind]
    _check(n_boot, level, len(sets))

    def metrics(per: Mapping[str, np.ndarray], take: Mapping[str, np.ndarray] | None) -> np.ndarray:
        def pick(k: str) -> np.ndarray:
            v = np.asarray(per[k], np.float64)
            return v if take is None else v[take[k]]

        return _metric_table(pick(ind), [pick(k) for k in sets])

    point_a, point_b = metrics(a, None), metrics(b, None)
    rng = np.random.default_rng(seed)
    reps = np.empty((n_boot, len(sets) + 1, len(METRICS)))
    for r in range(n_boot):
        take = {k: rng.integers(0, len(a[k]), len(a[k])) for k in a}
        reps[r] = metrics(a, take) - metrics(b, take)
    lo, hi = np.quantile(reps, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
    p = np.minimum(1.0, 2.0 * np.minimum((reps <= 0).mean(0), (reps >= 0).mean(0)))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for i, k in enumerate([*sets, "average"]):
        out[k] = {m: {"a": float(point_a[i, j]), "b": float(point_b[i, j]), "diff": float(point_a[i, j] - point_b[i, j]),
                      "low": float(lo[i, j]), "high": float(hi[i, j]), "p": float(p[i, j])} for j, m in enumerate(METRICS)}
    return out
