"""Exact metrics: equality with scikit-learn (hypothesis), hand-computed cases, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from tagood.metrics import fpr_at_tpr, ood_metrics, to_percent

tied = st.lists(st.integers(-3, 3).map(float), min_size=1, max_size=60)
untied = st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=60)


def _sk(a, b):
    y = np.r_[np.zeros(len(a)), np.ones(len(b))]
    s = np.r_[a, b]
    fpr_i, tpr_i, _ = roc_curve(1 - y, -s, drop_intermediate=False)  # IND positive, IND ranked by -score
    fpr_o, tpr_o, _ = roc_curve(y, s, drop_intermediate=False)  # OOD positive
    return {
        "auroc": roc_auc_score(y, s),
        "aupr_out": average_precision_score(y, s),
        "aupr_in": average_precision_score(1 - y, -s),
        # first ROC point reaching TPR >= 0.95 = smallest threshold with that TPR, whole tie groups
        "fpr95": fpr_i[np.argmax(tpr_i >= 0.95 - 1e-12)],
        "fpr95_ood_pos": fpr_o[np.argmax(tpr_o >= 0.95 - 1e-12)],
    }


@settings(max_examples=300, deadline=None)
@given(a=st.one_of(tied, untied), b=st.one_of(tied, untied))
def test_equals_sklearn(a, b):
    mine = ood_metrics(a, b)
    ref = _sk(np.array(a), np.array(b))
    for k, v in ref.items():
        assert mine[k] == pytest.approx(v, abs=1e-12), k


@settings(max_examples=100, deadline=None)
@given(a=tied, b=tied)
def test_swap_symmetry(a, b):
    m = ood_metrics(a, b)
    s = ood_metrics(-np.array(b), -np.array(a))  # OOD<->IND with negated scores
    assert s["auroc"] == pytest.approx(m["auroc"], abs=1e-12)
    assert s["aupr_in"] == pytest.approx(m["aupr_out"], abs=1e-12)
    assert s["fpr95"] == pytest.approx(m["fpr95_ood_pos"], abs=1e-12)


def test_hand_computed_fpr_conventions():
    ind = np.arange(20, dtype=float)  # 0..19
    ood = np.array([5.0, 18.5, 19.0, 25.0])
    m = ood_metrics(ind, ood)
    # IND positive: accept 95% of IND (19 of 20) -> smallest t with #IND<=t >= 19 is t=18;
    # OOD accepted (<= 18): only 5.0 -> 1/4
    assert m["fpr95"] == pytest.approx(0.25)
    # OOD positive: reject >= 95% of OOD, i.e. all 4 (3.8 rounds up) -> t = 5.0; IND >= 5: 5..19 = 15 of 20
    assert m["fpr95_ood_pos"] == pytest.approx(0.75)
    # AUROC: 5.0 beats 0..4 and ties 5 (5.5), 18.5 beats 0..18 (19), 19.0 beats 0..18 and ties 19 (19.5), 25 beats all 20
    assert m["auroc"] == pytest.approx((5.5 + 19 + 19.5 + 20) / 80)


def test_tie_group_is_never_split():
    ind = np.array([0.0] * 10 + [1.0] * 10)
    ood = np.array([1.0, 1.0, 2.0, 2.0])
    # 95% IND acceptance needs t=1 (accepts all 20 IND), which accepts both OOD at 1.0 -> 0.5
    assert fpr_at_tpr(ind, ood) == pytest.approx(0.5)


def test_perfect_and_inverted():
    m = ood_metrics([0, 1, 2], [3, 4])
    assert m["auroc"] == 1.0 and m["fpr95"] == 0.0 and m["aupr_in"] == 1.0 and m["aupr_out"] == 1.0
    w = ood_metrics([3, 4], [0, 1, 2])
    assert w["auroc"] == 0.0 and w["fpr95"] == 1.0


@pytest.mark.parametrize("bad", [[0.1, np.nan], [np.inf], []])
def test_bad_input_is_an_error(bad):
    with pytest.raises(ValueError):
        ood_metrics(bad, [0.0, 1.0])


def test_percent_and_dtype():
    p = to_percent(ood_metrics(np.float32([0.1, 0.2]), [0.3]))
    assert p["auroc"] == 100.0 and all(isinstance(v, float) for v in p.values())
