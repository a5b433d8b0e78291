"""Exact OOD metrics: equality with scikit-learn (hypothesis), hand-computed cases, symmetry, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from tagood.metrics import (
    METRIC_NAMES,
    aupr,
    auroc,
    fpr_at_tpr,
    ood_metrics,
    score_groups,
    to_percent,
)

# small integers -> many ties; wide floats -> (almost surely) no ties
tied = st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=60)
untied = st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=60)
scores = st.one_of(tied, untied)
tprs = st.sampled_from([0.95, 0.9, 0.5, 1.0, 0.01, 0.37])


def _first_at_tpr(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    """Brute-force reference: FPR at the first ROC point (thresholds descending) with TPR >= level."""
    return float(fpr[np.flatnonzero(tpr >= level)[0]])


def _sklearn(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, float]:
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]  # 1 = OOD
    s = np.r_[a, b]
    # IND positive: rank IND by the negated OOD score; a threshold t on -s accepts whole tie groups
    fpr_i, tpr_i, _ = roc_curve(1 - y, -s, drop_intermediate=False)
    fpr_o, tpr_o, _ = roc_curve(y, s, drop_intermediate=False)  # OOD positive
    return {
        "auroc": roc_auc_score(y, s),
        "fpr95": _first_at_tpr(fpr_i, tpr_i, level),
        "fpr95_ood_pos": _first_at_tpr(fpr_o, tpr_o, level),
        "aupr_in": average_precision_score(1 - y, -s),
        "aupr_out": average_precision_score(y, s),
        # OpenOOD v1.5 / pytorch-ood: the PR curve integrated with the trapezoid rule
        "aupr_in_trapz": auc(*precision_recall_curve(1 - y, -s)[1::-1]),
        "aupr_out_trapz": auc(*precision_recall_curve(y, s)[1::-1]),
    }


def _direct_fpr95(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Brute force over every pooled threshold, straight from the written definitions (O(N^2))."""
    ts = np.unique(np.r_[a, b])
    id_acc = np.array([(a <= t).mean() for t in ts])
    t_in = ts[np.flatnonzero(id_acc >= level)[0]]  # smallest threshold accepting >= level of IND
    ood_rej = np.array([(b >= t).mean() for t in ts])
    t_out = ts[np.flatnonzero(ood_rej >= level)[-1]]  # largest threshold rejecting >= level of OOD
    return float((b <= t_in).mean()), float((a >= t_out).mean())


@settings(max_examples=400, deadline=None)
@given(a=scores, b=scores)
def test_equals_sklearn(a, b):
    mine = ood_metrics(a, b)
    ref = _sklearn(np.array(a), np.array(b))
    assert list(mine) == list(METRIC_NAMES)
    for k, v in ref.items():
        assert mine[k] == pytest.approx(v, abs=1e-12), k
        assert 0.0 <= mine[k] <= 1.0 and isinstance(mine[k], float)


@settings(max_examples=200, deadline=None)
@given(a=scores, b=scores, level=tprs)
def test_fpr_at_any_tpr_matches_roc_curve_and_definition(a, b, level):
    a_, b_ = np.array(a), np.array(b)
    ref = _sklearn(a_, b_, level)
    direct = _direct_fpr95(a_, b_, level)
    m = ood_metrics(a, b, tpr=level)
    assert m["fpr95"] == ref["fpr95"] == direct[0]
    assert m["fpr95_ood_pos"] == ref["fpr95_ood_pos"] == direct[1]
    assert fpr_at_tpr(a, b, level, positive="id") == m["fpr95"]
    assert fpr_at_tpr(a, b, level, positive="ood") == m["fpr95_ood_pos"]


@settings(max_examples=150, deadline=None)
@given(a=scores, b=scores)
def test_swap_and_negate_symmetry(a, b):
    """Renaming OOD as IND and negating the scores is the same problem seen from the other side."""
    m = ood_metrics(a, b)
    s = ood_metrics(-np.array(b), -np.array(a))
    assert s["auroc"] == pytest.approx(m["auroc"], abs=1e-12)
    assert s["aupr_in"] == pytest.approx(m["aupr_out"], abs=1e-12)
    assert s["aupr_out"] == pytest.approx(m["aupr_in"], abs=1e-12)
    assert s["aupr_in_trapz"] == pytest.approx(m["aupr_out_trapz"], abs=1e-12)
    assert s["aupr_out_trapz"] == pytest.approx(m["aupr_in_trapz"], abs=1e-12)
    assert s["fpr95"] == m["fpr95_ood_pos"] and s["fpr95_ood_pos"] == m["fpr95"]
    # negating only flips the ranking: AUROC -> 1 - AUROC
    assert ood_metrics(-np.array(a), -np.array(b))["auroc"] == pytest.approx(1.0 - m["auroc"], abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(a=scores, b=scores, shift=st.integers(-50, 50), scale=st.sampled_from([2.0, 8.0, 1024.0]),
       perm_seed=st.integers(0, 2**16))
def test_invariant_to_order_and_monotone_maps(a, b, shift, scale, perm_seed):
    m = ood_metrics(a, b)
    rng = np.random.default_rng(perm_seed)
    a_, b_ = rng.permutation(np.array(a)), rng.permutation(np.array(b))
    assert ood_metrics(a_, b_) == m
    # multiplying by a power of two >= 1 is exact (|x| <= 1e3, no overflow): same order, same ties
    assert ood_metrics(a_ * scale, b_ * scale) == m
    pooled = np.r_[a_, b_]
    if np.all(pooled == np.round(pooled)):  # integer shift is exact on integer-valued scores
        assert ood_metrics(a_ + shift, b_ + shift) == m
    # duplicating every sample changes no rate
    assert ood_metrics(np.r_[a_, a_], np.r_[b_, b_]) == pytest.approx(m, abs=1e-12)


def test_hand_computed_both_fpr_conventions():
    ind = np.arange(20, dtype=float)  # 0, 1, ..., 19
    ood = np.array([5.0, 18.5, 19.0, 25.0])
    m = ood_metrics(ind, ood)
    # fpr95 (IND positive): accept >= 95% of 20 IND = 19 samples -> smallest t with #IND<=t >= 19
    # is t = 18. OOD accepted (<= 18): only 5.0 -> 1/4.
    assert m["fpr95"] == 0.25
    # fpr95_ood_pos (OOD positive): reject >= 95% of 4 OOD = 3.8 -> all 4 -> largest t with
    # #OOD>=t == 4 is t = 5.0. IND rejected (>= 5): 5..19 = 15 of 20 -> 0.75.
    assert m["fpr95_ood_pos"] == 0.75
    # AUROC: 5.0 beats 0..4 and ties 5 (5.5); 18.5 beats 0..18 (19); 19.0 beats 0..18 and ties 19
    # (19.5); 25 beats all 20 -> (5.5 + 19 + 19.5 + 20) / (20 * 4)
    assert m["auroc"] == (5.5 + 19 + 19.5 + 20) / 80
    # aupr_out, thresholds from the top: 25 (1 OOD, 0 IND) P=1; 19 (2 OOD, 1 IND) P=2/3;
    # 18.5 (3 OOD, 1 IND) P=3/4; 5 (4 OOD, 15 IND) P=4/19; each adds recall 1/4.
    assert m["aupr_out"] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 19) / 4, abs=1e-15)
    # trapezoid: every distinct score of either set is a curve point, plus (recall 0, precision 1).
    # Recall steps 1/4 at 25 (P 1), 19 (P 2/3), 18.5 (P 3/4), then IND-only points 18..6 lower the
    # precision at recall 3/4 to 3/17 (t = 6: 3 OOD, 14 IND) before 5 (P 4/19) reaches recall 1.
    trapz = 0.25 * (1 + (1 + 2 / 3) / 2 + (2 / 3 + 3 / 4) / 2 + (3 / 17 + 4 / 19) / 2)
    assert m["aupr_out_trapz"] == pytest.approx(trapz, abs=1e-15)
    assert abs(m["aupr_out_trapz"] - m["aupr_out"]) > 0.02  # the two definitions differ here by 2.7 points


def test_hand_computed_ties_never_split():
    ind = np.array([0.0] * 10 + [1.0] * 10)
    ood = np.array([1.0, 1.0, 2.0, 2.0])
    # IND positive: t=0 accepts 10/20 = 0.5 IND; the next threshold t=1 accepts all 20 (>= 0.95),
    # and with it both OOD samples at 1.0 (the tie group is accepted whole) -> 2/4 = 0.5.
    assert fpr_at_tpr(ind, ood) == 0.5
    # OOD positive: t=2 rejects 2/4 = 0.5 OOD; t=1 rejects all 4 (>= 0.95) and with it the 10 IND
    # at 1.0 -> 10/20 = 0.5.
    assert fpr_at_tpr(ind, ood, positive="ood") == 0.5
    # AUROC: the two 1.0s tie with 10 IND and beat 10 (15 each); the 2.0s beat all 20.
    assert auroc(ind, ood) == (15 + 15 + 20 + 20) / 80


def test_the_two_conventions_differ():
    # IND spread wide, OOD tight on the high side: few OOD slip under the IND 95% point, but the
    # OOD 95% point sits inside the IND bulk.
    ind = np.arange(100, dtype=float)  # 0..99
    ood = np.r_[np.full(10, 50.0), np.full(90, 200.0)]
    m = ood_metrics(ind, ood)
    # fpr95: t = 94 (95 of 100 IND <= 94); OOD <= 94: the ten 50s -> 0.10
    assert m["fpr95"] == 0.10
    # fpr95_ood_pos: need >= 95 OOD rejected -> t = 50 (100 OOD >= 50); IND >= 50: 50..99 -> 0.50
    assert m["fpr95_ood_pos"] == 0.50


def test_perfect_inverted_and_constant():
    m = ood_metrics([0, 1, 2], [3, 4])
    assert m == {"auroc": 1.0, "fpr95": 0.0, "fpr95_ood_pos": 0.0, "aupr_in": 1.0, "aupr_out": 1.0,
                 "aupr_in_trapz": 1.0, "aupr_out_trapz": 1.0}
    w = ood_metrics([3, 4], [0, 1, 2])
    assert w["auroc"] == 0.0 and w["fpr95"] == 1.0 and w["fpr95_ood_pos"] == 1.0
    # one constant score: chance AUROC, every threshold accepts/rejects everybody, AP = prevalence;
    # the trapezoid joins (recall 1, prevalence) to the end point (0, 1): (1 + prevalence) / 2
    c = ood_metrics(np.zeros(3), np.zeros(5))
    assert c == {"auroc": 0.5, "fpr95": 1.0, "fpr95_ood_pos": 1.0, "aupr_in": 3 / 8, "aupr_out": 5 / 8,
                 "aupr_in_trapz": 11 / 16, "aupr_out_trapz": 13 / 16}


def test_building_blocks_agree_with_ood_metrics():
    rng = np.random.default_rng(0)
    a, b = np.round(rng.normal(0, 1, 500), 1), np.round(rng.normal(1, 1, 300), 1)
    m = ood_metrics(a, b)
    assert auroc(a, b) == m["auroc"]
    assert aupr(a, b, positive="id") == m["aupr_in"] and aupr(a, b) == m["aupr_out"]
    assert aupr(a, b, "id", rule="trapz") == m["aupr_in_trapz"] and aupr(a, b, rule="trapz") == m["aupr_out_trapz"]
    g = score_groups(a, b)
    assert (g.n_id, g.n_ood) == (500, 300) and g.metrics() == m
    assert np.all(np.diff(g.id_values) > 0) and g.id_counts.sum() == 500


def test_large_exact_against_sklearn():
    rng = np.random.default_rng(1)
    a = np.round(rng.normal(0.0, 1.0, 200_000), 2).astype(np.float32)  # float32 input, heavy ties
    b = np.round(rng.normal(0.7, 1.3, 150_000), 2).astype(np.float32)
    ref = _sklearn(a.astype(np.float64), b.astype(np.float64))
    mine = ood_metrics(a, b)
    for k in METRIC_NAMES:
        assert mine[k] == pytest.approx(ref[k], abs=1e-12), k


@pytest.mark.parametrize("bad", [[0.1, np.nan], [np.inf], [-np.inf, 1.0], []])
@pytest.mark.parametrize("which", ["id_scores", "ood_scores"])
def test_bad_input_names_the_array(bad, which):
    good = [0.0, 1.0]
    args = (bad, good) if which == "id_scores" else (good, bad)
    with pytest.raises(ValueError, match=which):
        ood_metrics(*args)


def test_bad_shape_tpr_and_positive():
    with pytest.raises(ValueError, match="1-D"):
        ood_metrics(np.zeros((3, 2)), [1.0])
    with pytest.raises(ValueError, match="tpr"):
        ood_metrics([0.0], [1.0], tpr=0.0)
    with pytest.raises(ValueError, match="positive"):
        fpr_at_tpr([0.0], [1.0], positive="both")
    with pytest.raises(ValueError, match="positive"):
        aupr([0.0], [1.0], positive="in")
    with pytest.raises(ValueError, match="trapz"):
        aupr([0.0], [1.0], rule="trapezoid")


def test_percent():
    m = ood_metrics(np.float32([0.1, 0.2]), [0.3])
    p = to_percent(m)
    assert p["auroc"] == 100.0 and p["fpr95"] == 0.0
    assert set(p) == set(m) and all(isinstance(v, float) for v in p.values())


def test_metric_rows_carry_every_metric_in_percent():
    from tagood.bench.scores import metric_rows

    rng = np.random.default_rng(2)
    a, b = np.round(rng.normal(0, 1, 300), 1), np.round(rng.normal(1, 1, 200), 1)
    (row,) = metric_rows("m", a, {"o": b})
    assert list(row) == ["method", "ood", *METRIC_NAMES]
    m = ood_metrics(a, b)
    for k in METRIC_NAMES:
        assert row[k] == pytest.approx(100.0 * m[k], abs=1e-12), k
    assert row["aupr_out_trapz"] != row["aupr_out"]  # tied scores: the two AUPR definitions differ
