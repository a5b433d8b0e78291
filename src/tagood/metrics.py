"""Exact OOD-detection metrics (DESIGN section 4). Scores are OOD scores: higher = more OOD.

All five metrics come from **one** sort of the pooled scores and cumulative counts over groups of
equal scores, so ties are handled exactly and the cost is O(N log N):

* ``auroc``: P(OOD score > IND score) + 1/2 P(equal) — equals scikit-learn's ``roc_auc_score``
  with OOD as the positive class.
* ``fpr95`` (IND positive; TagOOD, MCM, NegLabel, KNN papers): fraction of OOD samples *accepted*
  (score <= t) at the smallest threshold t whose IND acceptance rate is >= 0.95. Tie rule: every
  sample whose score equals t is accepted, so a tie group is never split.
* ``fpr95_ood_pos`` (OpenOOD v1.5, KR-NFT code): fraction of IND samples *rejected* (score >= t)
  at the largest threshold t whose OOD rejection rate is >= 0.95; the same tie rule mirrored.
* ``aupr_in`` / ``aupr_out``: average precision (scikit-learn ``average_precision_score``
  semantics: sum over thresholds of (R_k - R_{k-1}) P_k, no interpolation) with IND / OOD as the
  positive class; IND samples are ranked by the negated OOD score.

Values are float64 fractions in [0, 1]; NaN or infinite scores raise ``ValueError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRIC_NAMES = ("auroc", "fpr95", "fpr95_ood_pos", "aupr_in", "aupr_out")


def _check(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty: need at least one score")
    bad = ~np.isfinite(a)
    if bad.any():
        raise ValueError(f"{name} holds {int(bad.sum())} NaN/inf score(s) (first at index {int(np.flatnonzero(bad)[0])}); "
                         "scores must be finite — fix the detector instead of dropping samples")
    return a


def _groups(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct score value in ascending order: (#IND, #OOD) holding that score."""
    n_id = len(id_scores)
    scores = np.concatenate([id_scores, ood_scores])
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    is_ood = order >= n_id
    # boundaries of tie groups
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    ood_cum = np.concatenate(([0], np.cumsum(is_ood, dtype=np.int64)))
    ends = np.concatenate((starts[1:], [len(s)]))
    ood_g = ood_cum[ends] - ood_cum[starts]
    id_g = (ends - starts) - ood_g
    return id_g, ood_g


def _ap(pos_desc: np.ndarray, neg_desc: np.ndarray) -> float:
    """Average precision from per-group positive/negative counts in *descending* score order."""
    tp = np.cumsum(pos_desc, dtype=np.float64)
    fp = np.cumsum(neg_desc, dtype=np.float64)
    total = tp[-1]
    if total == 0:
        return 0.0
    precision = tp / (tp + fp)
    recall_step = pos_desc / total
    return float(np.sum(recall_step * precision))


def _from_groups(id_g: np.ndarray, ood_g: np.ndarray, tpr: float = 0.95) -> dict[str, float]:
    n_id = float(id_g.sum())
    n_ood = float(ood_g.sum())
    id_le = np.cumsum(id_g)  # IND accepted at threshold = group value (score <= t)
    ood_le = np.cumsum(ood_g)
    # AUROC: for each OOD group, IND strictly below + half the IND tied
    id_below = id_le - id_g
    auroc = float(np.sum(ood_g * (id_below + 0.5 * id_g)) / (n_id * n_ood))
    # fpr95 (IND positive): smallest threshold with IND acceptance >= tpr
    k = int(np.searchsorted(id_le, tpr * n_id - 1e-9 * n_id, side="left"))
    k = min(k, len(id_le) - 1)
    fpr95 = float(ood_le[k] / n_ood)
    # fpr95_ood_pos: largest threshold with OOD rejection (score >= t) >= tpr
    ood_ge = n_ood - (ood_le - ood_g)  # OOD with score >= group value
    id_ge = n_id - (id_le - id_g)
    ok = np.flatnonzero(ood_ge >= tpr * n_ood - 1e-9 * n_ood)
    j = int(ok[-1]) if len(ok) else 0
    fpr95_ood_pos = float(id_ge[j] / n_id)
    aupr_out = _ap(ood_g[::-1], id_g[::-1])  # OOD positive, rank by descending OOD score
    aupr_in = _ap(id_g, ood_g)  # IND positive, rank by descending -score = ascending score
    return {"auroc": auroc, "fpr95": fpr95, "fpr95_ood_pos": fpr95_ood_pos, "aupr_in": aupr_in, "aupr_out": aupr_out}


def ood_metrics(id_scores: Any, ood_scores: Any, tpr: float = 0.95) -> dict[str, float]:
    """All five metrics of DESIGN section 4 for IND and OOD *OOD scores* (higher = more OOD).

    Returns fractions in [0, 1]: ``auroc``, ``fpr95``, ``fpr95_ood_pos``, ``aupr_in``, ``aupr_out``.
    ``tpr`` changes the 95% operating point of both FPR metrics (keys keep their names).
    """
    a = _check(id_scores, "id_scores")
    b = _check(ood_scores, "ood_scores")
    return _from_groups(*_groups(a, b), tpr=tpr)


def auroc(id_scores: Any, ood_scores: Any) -> float:
    """P(OOD score > IND score) + 1/2 P(tie)."""
    return ood_metrics(id_scores, ood_scores)["auroc"]


def fpr_at_tpr(id_scores: Any, ood_scores: Any, tpr: float = 0.95, positive: str = "id") -> float:
    """FPR at the given TPR. ``positive="id"``: TagOOD/MCM ``fpr95``; ``"ood"``: OpenOOD ``fpr95_ood_pos``."""
    m = ood_metrics(id_scores, ood_scores, tpr=tpr)
    if positive not in ("id", "ood"):
        raise ValueError("positive must be 'id' or 'ood'")
    return m["fpr95"] if positive == "id" else m["fpr95_ood_pos"]


def to_percent(metrics: dict[str, float]) -> dict[str, float]:
    """Multiply every metric by 100 (tables report percent)."""
    return {k: 100.0 * v for k, v in metrics.items()}
