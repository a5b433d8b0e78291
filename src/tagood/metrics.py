"""Exact OOD-detection metrics. Scores are OOD scores: higher = more OOD.

IND is "accepted" by a threshold ``t`` when its score is ``<= t`` and OOD is "rejected" when its
score is ``>= t`` (scikit-learn's ``roc_curve`` rule, score >= threshold predicts the positive).

* ``auroc``: P(OOD score > IND score) + 1/2 P(OOD score == IND score); equals scikit-learn's
  ``roc_auc_score(is_ood, score)``.
* ``fpr95`` -- IND positive, the convention of TagOOD (Li et al., ACM MM 2024), MCM (Ming et al.,
  NeurIPS 2022), NegLabel (Jiang et al., ICLR 2024) and KNN (Sun et al., ICML 2022): the fraction
  of OOD samples accepted (score <= t) at the **smallest** threshold ``t`` whose IND acceptance
  rate is >= 0.95. No interpolation. Tie rule: every sample whose score equals ``t`` is accepted,
  so a group of equal scores is never split (the first point of ``roc_curve(is_id, -score)`` with
  TPR >= 0.95).
* ``fpr95_ood_pos`` -- OOD positive, the convention of OpenOOD v1.5 (Zhang et al., arXiv 2306.09301, 2023) and the
  KR-NFT code (Zhu et al., 2025): the fraction of IND samples rejected (score >= t) at the
  **largest** threshold ``t`` whose OOD rejection rate is >= 0.95; mirrored tie rule: every sample
  whose score equals ``t`` is rejected (the first point of ``roc_curve(is_ood, score)`` with
  TPR >= 0.95). Swapping the two sets and negating every score turns one FPR into the other.
* ``aupr_in`` / ``aupr_out``: average precision with IND / OOD as the positive class, with
  scikit-learn ``average_precision_score`` semantics (sum over distinct thresholds of
  ``(R_k - R_{k-1}) * P_k``, no interpolation); IND is ranked by the negated OOD score.
* ``aupr_in_trapz`` / ``aupr_out_trapz``: the area under the same precision-recall curves by the
  trapezoid rule, as OpenOOD v1.5 (``openood/evaluators/metrics.py``: scikit-learn
  ``precision_recall_curve`` then ``auc(recall, precision)``) and pytorch-ood (``OODMetrics``:
  torchmetrics ``binary_precision_recall_curve`` then ``auc``) compute their AUPR-IN / AUPR-OUT. The
  curve has one point per distinct score of the union of both sets plus the end point
  (recall 0, precision 1); the trapezoid interpolates precision linearly between neighbouring
  points, so with tied scores it differs from average precision (by a few points on tie-heavy
  scores). Identical to ``auc(*precision_recall_curve(...)[1::-1])`` of scikit-learn.

How: each set is sorted once (``np.sort``), collapsed into runs of equal scores, and the two run
lists are merged with one ``np.searchsorted``; every metric is then a vectorised expression over
the runs. Cost O(N log N), exact with ties, float64 results in [0, 1]. NaN/inf scores or empty
arrays raise :class:`tagood.errors.InputError` (a ``ValueError``) naming the array; a bad ``tpr``, ``positive`` or
``rule`` raises :class:`tagood.errors.ConfigError` (also a ``ValueError``).

Example:
    >>> from tagood.metrics import ood_metrics
    >>> m = ood_metrics([0.1, 0.2, 0.3, 0.4], [0.35, 0.5, 0.6])
    >>> round(m["auroc"], 4), round(m["fpr95"], 4)
    (0.9167, 0.3333)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from tagood.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

METRIC_NAMES: tuple[str, ...] = ("auroc", "fpr95", "fpr95_ood_pos", "aupr_in", "aupr_out", "aupr_in_trapz", "aupr_out_trapz")


def check_scores(scores: ArrayLike, name: str) -> NDArray[np.float64]:
    """Return ``scores`` as a 1-D float64 array.

    Args:
        scores: per-sample OOD scores (a sequence or array of numbers).
        name: what to call the array in the error message (``"id_scores"``).

    Returns:
        The scores as a 1-D float64 array (no copy when they already are one).

    Raises:
        InputError: (a ``ValueError``) naming ``name`` when the scores are empty, not 1-D or not finite.
    """
    a: NDArray[np.float64] = np.asarray(scores, dtype=np.float64)
    if a.ndim != 1:
        raise InputError(f"{name} must be a 1-D array of per-sample OOD scores, got shape {a.shape}; "
                         "reduce each sample to one score first")
    if a.size == 0:
        raise InputError(f"{name} is empty: need at least one score")
    finite = np.isfinite(a)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputError(f"{name} holds {bad.size} NaN/inf score(s) (first at index {int(bad[0])}, value {a[bad[0]]!r}); "
                         "scores must be finite: fix the detector instead of dropping samples")
    return a


def _check_tpr(tpr: float) -> float:
    if not 0.0 < tpr <= 1.0:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr!r}")
    return float(tpr)


def _runs(sorted_scores: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Distinct values of an ascending array and how often each occurs (int64)."""
    n = sorted_scores.size
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new[1:])
    if new.all():  # no ties: every value is its own run
        return sorted_scores, np.ones(n, dtype=np.int64)
    starts = np.flatnonzero(new)
    counts = np.empty(starts.size, dtype=np.int64)
    np.subtract(starts[1:], starts[:-1], out=counts[:-1])
    counts[-1] = n - starts[-1]
    return sorted_scores[starts], counts


@dataclass(frozen=True)
class ScoreGroups:
    """IND and OOD scores collapsed into runs of equal values, with their cross counts.

    ``id_values``/``id_counts`` and ``ood_values``/``ood_counts`` are the distinct scores of each
    set in ascending order and their multiplicities. ``id_below[j]`` / ``id_equal[j]`` count IND
    scores strictly below / equal to ``ood_values[j]``; ``ood_at_or_below[i]`` counts OOD scores
    ``<= id_values[i]``. Every metric in this module is a closed-form expression over these.
    """

    id_values: NDArray[np.float64]
    id_counts: NDArray[np.int64]
    ood_values: NDArray[np.float64]
    ood_counts: NDArray[np.int64]
    id_below: NDArray[np.int64]
    id_equal: NDArray[np.int64]
    ood_at_or_below: NDArray[np.int64]

    @property
    def n_id(self) -> int:
        return int(self.id_counts.sum())

    @property
    def n_ood(self) -> int:
        return int(self.ood_counts.sum())

    def auroc(self) -> float:
        """P(OOD > IND) + 1/2 P(tie), computed in exact integer arithmetic then divided once."""
        twice_wins = 2 * int(np.dot(self.ood_counts, self.id_below)) + int(np.dot(self.ood_counts, self.id_equal))
        return twice_wins / (2 * self.n_id * self.n_ood)

    def fpr_id_positive(self, tpr: float = 0.95) -> float:
        """TagOOD/MCM FPR: OOD accepted at the smallest threshold accepting >= ``tpr`` of IND."""
        tpr = _check_tpr(tpr)
        accepted = np.cumsum(self.id_counts) / self.n_id  # IND acceptance at t = id_values[i]
        i = int(np.searchsorted(accepted, tpr, side="left"))  # first i with accepted[i] >= tpr
        return float(self.ood_at_or_below[min(i, accepted.size - 1)] / self.n_ood)

    def fpr_ood_positive(self, tpr: float = 0.95) -> float:
        """OpenOOD v1.5 FPR: IND rejected at the largest threshold rejecting >= ``tpr`` of OOD."""
        tpr = _check_tpr(tpr)
        n_ood = self.n_ood
        rejected = (n_ood - (np.cumsum(self.ood_counts) - self.ood_counts)) / n_ood  # OOD >= ood_values[j]
        j = max(int(np.count_nonzero(rejected >= tpr)) - 1, 0)  # non-increasing, rejected[0] == 1
        return float((self.n_id - self.id_below[j]) / self.n_id)

    def aupr_in(self) -> float:
        """Average precision with IND positive, thresholds at IND runs in ascending score order."""
        tp = np.cumsum(self.id_counts)
        precision = tp / (tp + self.ood_at_or_below)
        return float(np.dot(self.id_counts, precision) / self.n_id)

    def aupr_out(self) -> float:
        """Average precision with OOD positive, thresholds at OOD runs in descending score order."""
        n_ood = self.n_ood
        tp = n_ood - (np.cumsum(self.ood_counts) - self.ood_counts)  # OOD >= ood_values[j]
        fp = self.n_id - self.id_below  # IND >= ood_values[j]
        return float(np.dot(self.ood_counts, tp / (tp + fp)) / n_ood)

    def aupr_in_trapz(self) -> float:
        """Trapezoid area under the PR curve with IND positive (OpenOOD / pytorch-ood AUPR-IN).

        IND is accepted at ``score <= t``; along ascending thresholds, recall rises only at IND runs.
        The trapezoid of IND run ``i`` spans from the curve point just before it (threshold: the next
        lower distinct score of either set, where ``tp = IND < v_i`` and ``fp = OOD < v_i``; the end
        point (0, 1) when nothing is below) to its own point (``IND <= v_i``, ``OOD <= v_i``)."""
        tp = np.cumsum(self.id_counts)
        fp = self.ood_at_or_below
        ood_cum = np.concatenate(([0], np.cumsum(self.ood_counts)))
        fp_prev = ood_cum[np.searchsorted(self.ood_values, self.id_values, side="left")]  # OOD < v_i
        return self._trapz(tp, fp, tp - self.id_counts, fp_prev, self.n_id)

    def aupr_out_trapz(self) -> float:
        """Trapezoid area under the PR curve with OOD positive (OpenOOD / pytorch-ood AUPR-OUT); OOD runs
        in descending score order, each from the point just above it (``OOD > v_j``, ``IND > v_j``)."""
        tp = self.n_ood - (np.cumsum(self.ood_counts) - self.ood_counts)  # OOD >= ood_values[j]
        fp = self.n_id - self.id_below  # IND >= ood_values[j]
        return self._trapz(tp, fp, tp - self.ood_counts, fp - self.id_equal, self.n_ood)

    @staticmethod
    def _trapz(tp: NDArray[np.int64], fp: NDArray[np.int64], tp_prev: NDArray[np.int64], fp_prev: NDArray[np.int64],
               n_pos: int) -> float:
        """sum over positive runs of (recall step) x (mean of the precisions at both ends). A previous
        point with no sample accepted is the curve's end point (recall 0, precision 1); one with only
        negatives accepted has precision 0 (scikit-learn's convention)."""
        prev_n = tp_prev + fp_prev
        p_prev = np.where(prev_n > 0, tp_prev / np.maximum(prev_n, 1), 1.0)
        p = tp / (tp + fp)
        return float(np.dot(tp - tp_prev, p + p_prev) / (2.0 * n_pos))

    def metrics(self, tpr: float = 0.95) -> dict[str, float]:
        """All metrics (keys :data:`METRIC_NAMES`) as float fractions."""
        return {
            "auroc": self.auroc(),
            "fpr95": self.fpr_id_positive(tpr),
            "fpr95_ood_pos": self.fpr_ood_positive(tpr),
            "aupr_in": self.aupr_in(),
            "aupr_out": self.aupr_out(),
            "aupr_in_trapz": self.aupr_in_trapz(),
            "aupr_out_trapz": self.aupr_out_trapz(),
        }


def score_groups(id_scores: ArrayLike, ood_scores: ArrayLike) -> ScoreGroups:
    """Validate, sort each set once and merge their runs of equal scores (see :class:`ScoreGroups`).

    Args:
        id_scores: OOD scores of the in-distribution samples, 1-D.
        ood_scores: OOD scores of the out-of-distribution samples, 1-D.

    Returns:
        The runs and cross counts every metric is computed from; compute several metrics from one.
    """
    id_values, id_counts = _runs(np.sort(check_scores(id_scores, "id_scores")))
    ood_values, ood_counts = _runs(np.sort(check_scores(ood_scores, "ood_scores")))
    # pos[j] = number of distinct IND values strictly below ood_values[j] (ood_values ascending)
    pos = np.searchsorted(id_values, ood_values, side="left")
    id_cum = np.concatenate(([0], np.cumsum(id_counts)))
    id_below = id_cum[pos]
    at = np.minimum(pos, id_values.size - 1)
    id_equal = np.where(id_values[at] == ood_values, id_counts[at], 0)
    # ood_values[j] <= id_values[i]  <=>  pos[j] <= i, so OOD counts land on IND run pos[j]
    landed = np.bincount(np.repeat(pos, ood_counts), minlength=id_values.size + 1)[: id_values.size]
    ood_at_or_below = np.cumsum(landed, dtype=np.int64)
    logger.debug("metrics: %d IND scores in %d runs, %d OOD scores in %d runs",
                 int(id_cum[-1]), id_values.size, int(ood_counts.sum()), ood_values.size)
    return ScoreGroups(id_values, id_counts, ood_values, ood_counts, id_below, id_equal, ood_at_or_below)


def ood_metrics(id_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = 0.95) -> dict[str, float]:
    """Every OOD-detection metric of per-sample OOD scores (higher = more OOD).

    Args:
        id_scores: OOD scores of the in-distribution samples, 1-D, finite.
        ood_scores: OOD scores of the out-of-distribution samples, 1-D, finite.
        tpr: operating point of both FPRs, in (0, 1] (the keys keep their names).

    Returns:
        Float fractions in [0, 1] keyed ``auroc``, ``fpr95`` (IND positive; TagOOD/MCM), ``fpr95_ood_pos`` (OOD
        positive; OpenOOD v1.5), ``aupr_in`` and ``aupr_out`` (average precision, scikit-learn), ``aupr_in_trapz``
        and ``aupr_out_trapz`` (trapezoid rule, OpenOOD / pytorch-ood); see the module docstring for the exact
        definitions and tie rules.

    Raises:
        InputError: for empty, non-1-D or non-finite scores; ConfigError: for ``tpr`` outside (0, 1] (both are
            ``ValueError``).

    Example:
        >>> m = ood_metrics([0.1, 0.2, 0.3, 0.4], [0.35, 0.5, 0.6])  # IND scores, then OOD scores
        >>> round(m["auroc"], 4), round(m["fpr95"], 4)
        (0.9167, 0.3333)
    """
    return score_groups(id_scores, ood_scores).metrics(tpr)


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """AUROC with OOD positive: P(OOD score > IND score) + 1/2 P(tie) (= sklearn ``roc_auc_score``).

    Args:
        id_scores: OOD scores of the in-distribution samples, 1-D.
        ood_scores: OOD scores of the out-of-distribution samples, 1-D.

    Returns:
        The AUROC as a fraction in [0, 1] (1 = every OOD sample scores above every IND sample).
    """
    return score_groups(id_scores, ood_scores).auroc()


def fpr_at_tpr(id_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = 0.95,
               positive: Literal["id", "ood"] = "id") -> float:
    """False-positive rate at the given true-positive rate.

    Args:
        id_scores: OOD scores of the in-distribution samples, 1-D.
        ood_scores: OOD scores of the out-of-distribution samples, 1-D.
        tpr: the true-positive rate of the operating point, in (0, 1].
        positive: ``"id"``: IND positive, TagOOD/MCM ``fpr95``; ``"ood"``: OOD positive, OpenOOD ``fpr95_ood_pos``.

    Returns:
        The FPR as a fraction in [0, 1] (lower is better).
    """
    if positive not in ("id", "ood"):
        raise ConfigError(f"positive must be 'id' or 'ood', got {positive!r}")
    groups = score_groups(id_scores, ood_scores)
    return groups.fpr_id_positive(tpr) if positive == "id" else groups.fpr_ood_positive(tpr)


def aupr(id_scores: ArrayLike, ood_scores: ArrayLike, positive: Literal["id", "ood"] = "ood",
         rule: Literal["ap", "trapz"] = "ap") -> float:
    """Area under the precision-recall curve.

    Args:
        id_scores: OOD scores of the in-distribution samples, 1-D.
        ood_scores: OOD scores of the out-of-distribution samples, 1-D.
        positive: the positive class: ``"id"`` (``aupr_in``) or ``"ood"`` (``aupr_out``).
        rule: ``"ap"``: average precision (scikit-learn semantics); ``"trapz"``: trapezoid rule (OpenOOD /
            pytorch-ood).

    Returns:
        The area as a fraction in [0, 1] (higher is better).
    """
    if positive not in ("id", "ood"):
        raise ConfigError(f"positive must be 'id' or 'ood', got {positive!r}")
    if rule not in ("ap", "trapz"):
        raise ConfigError(f"rule must be 'ap' (average precision) or 'trapz' (trapezoid), got {rule!r}")
    g = score_groups(id_scores, ood_scores)
    if rule == "trapz":
        return g.aupr_in_trapz() if positive == "id" else g.aupr_out_trapz()
    return g.aupr_in() if positive == "id" else g.aupr_out()


def to_percent(metrics: Mapping[str, float]) -> dict[str, float]:
    """Copy of ``metrics`` with every value multiplied by 100 (papers' tables report percent)."""
    return {k: 100.0 * float(v) for k, v in metrics.items()}
