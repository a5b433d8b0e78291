"""The paired comparison of two methods scored on the same samples (``tagood metrics --compare A,B``).

Is method A better than method B, or is the difference noise? Both were scored on the same IND test images and the
same OOD images, so their errors are correlated; a paired bootstrap (:func:`tagood.bench.intervals.paired_difference`)
resamples the *samples* once per replicate and applies the draw to both methods' scores, so what the two share
cancels out. Scores: higher = more OOD; metrics in percent, as in the results table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tagood.bench.intervals import paired_difference
from tagood.errors import ConfigError

__all__ = ["ComparisonResult", "Difference", "compare"]

#: per-sample scores of a run: ``{method: {split: scores}}`` (what :func:`tagood.bench.scores.load_scores` returns)
Scores = Mapping[str, Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class Difference:
    """One metric of one OOD set (or of their average): A's value, B's value, ``diff = a - b``, the bootstrap interval
    ``[low, high]`` of the difference and the two-sided bootstrap p-value of "no difference". Percent."""

    a: float
    b: float
    diff: float
    low: float
    high: float
    p: float


@dataclass(frozen=True)
class ComparisonResult:
    """Method ``a`` minus method ``b``: ``sets[ood_set or "average"][metric]`` is a :class:`Difference`.

    Metrics are those of the results table (``auroc``, ``fpr95``, ``fpr95_ood_pos``, ``aupr_in``, ``aupr_out``), in
    percent; a positive AUROC difference means ``a`` separates IND from OOD better, a positive FPR95 difference that
    ``a`` accepts more OOD images (worse). Returned by :func:`compare`.

    Attributes:
        a: the first method's spec.
        b: the spec of the method it is compared with.
        n_boot: the number of bootstrap replicates.
        level: the confidence level of the intervals.
        seed: the seed of the resampling.
        ind_split: the name of the IND test split.
        sets: ``{ood_set or "average": {metric: Difference}}``.
    """

    a: str
    b: str
    n_boot: int
    level: float
    seed: int
    ind_split: str
    sets: dict[str, dict[str, Difference]]

    def to_dict(self) -> dict[str, Any]:
        """The JSON document ``tagood metrics --compare`` writes as ``comparison.json``.

        Returns:
            A dict of plain values: the attributes, with each :class:`Difference` as a dict of its fields.
        """
        return {"a": self.a, "b": self.b, "n_boot": self.n_boot, "level": self.level, "seed": self.seed,
                "ind_split": self.ind_split,
                "sets": {k: {m: asdict(d) for m, d in by.items()} for k, by in self.sets.items()}}


def compare(run_or_scores: str | Path | Scores, a: str, b: str, n_boot: int = 1000, level: float = 0.95,
            seed: int = 0, ind: str = "test") -> ComparisonResult:
    """Paired bootstrap of method ``a`` minus method ``b`` on the same samples, per OOD set and on their average.

    Each of the ``n_boot`` replicates draws one set of sample indices per split (IND and each OOD set, with
    replacement) and applies it to both methods' scores; the interval is the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of the replicates' differences, ``p`` twice the smaller tail around 0.

    Args:
        run_or_scores: a run directory of ``tagood bench`` / ``tagood demo`` (holding ``scores.npz``), a scores
            ``.npz`` file, or the per-sample scores themselves, ``{method: {split: scores}}`` (higher = more OOD).
        a: the method spec to compare, as in the results table (e.g. ``"tagood"`` or ``"knn[k=10]"``).
        b: the method spec it is compared with.
        n_boot: bootstrap replicates (at least 2; 1000 gives p-values down to 0.001).
        level: confidence level of the intervals, in (0, 1).
        seed: seed of the resampling (same seed, same result).
        ind: the name of the IND test split in the scores.

    Returns:
        A :class:`ComparisonResult`; ``result.sets["average"]["auroc"].diff`` is the average AUROC difference in
        percentage points.

    Raises:
        tagood.errors.ConfigError: ``a`` or ``b`` has no scores, or ``a == b``.
        tagood.errors.InputError: the two methods were not scored on the same samples.

    Example:
        >>> import numpy as np
        >>> from tagood.bench.compare import compare
        >>> rng = np.random.default_rng(0)
        >>> ind, ood = rng.normal(0, 1, 300), rng.normal(2, 1, 300)
        >>> blur = lambda s: s + rng.normal(0, 2, len(s))  # the same samples, noisier scores
        >>> scores = {"sharp": {"test": ind, "far": ood}, "blurred": {"test": blur(ind), "far": blur(ood)}}
        >>> res = compare(scores, "sharp", "blurred", n_boot=200)
        >>> d = res.sets["far"]["auroc"]
        >>> bool(d.diff > 0 and d.low > 0)  # sharp separates better, and the 95% interval excludes 0
        True
        >>> sorted(res.sets)
        ['average', 'far']
    """
    per = _scores(run_or_scores)
    if a == b:
        raise ConfigError(f"compare two different methods, got {a!r} twice")
    missing = [m for m in (a, b) if m not in per]
    if missing:
        raise ConfigError(f"no scores for {missing}; the methods scored{_where(run_or_scores)} are {sorted(per)}")
    res = paired_difference(per[a], per[b], n_boot, level, seed, ind)
    sets = {k: {m: Difference(**d) for m, d in by.items()} for k, by in res.items()}
    return ComparisonResult(a=a, b=b, n_boot=n_boot, level=level, seed=seed, ind_split=ind, sets=sets)


def _scores(run_or_scores: str | Path | Scores) -> Scores:
    if isinstance(run_or_scores, (str, Path)):
        from tagood.bench.scores import load_scores

        return load_scores(run_or_scores)[0]
    return run_or_scores


def _where(run_or_scores: str | Path | Scores) -> str:
    return f" in {run_or_scores}" if isinstance(run_or_scores, (str, Path)) else ""
