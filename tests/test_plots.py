"""Figures from per-sample scores: the ROC curve agrees with the metrics (area = AUROC, marked point = FPR95),
and `tagood metrics --plots` writes real PNG files."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from tagood.bench.report.plots import fpr95_index, roc_curve_ind
from tagood.bench.scores import save_scores
from tagood.cli.main import app
from tagood.metrics import ood_metrics

_scores = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=40)  # few values: many ties


@settings(max_examples=200, deadline=None)
@given(_scores, _scores)
def test_roc_area_is_auroc_and_marked_point_is_fpr95(s_id, s_ood) -> None:
    fpr, tpr = roc_curve_ind(np.array(s_id), np.array(s_ood))
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    m = ood_metrics(np.array(s_id), np.array(s_ood))
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids: ties count half
    assert abs(area - m["auroc"]) < 1e-12
    assert abs(fpr[fpr95_index(tpr)] - m["fpr95"]) < 1e-12


def test_metrics_plots_writes_pngs(tmp_path) -> None:
    rng = np.random.default_rng(0)
    scores = {"msp": {"test": rng.normal(0, 1, 200), "far": rng.normal(2, 1, 150), "near": rng.normal(0.7, 1, 150)},
              "tagood[tau=0.25]": {"test": rng.normal(0, 1, 200), "far": np.r_[rng.normal(3, 1, 149), 1e12],
                                   "near": rng.normal(1, 1, 150)}}
    save_scores(tmp_path / "scores.npz", scores)
    r = CliRunner().invoke(app, ["metrics", str(tmp_path), "--plots"], terminal_width=200)
    assert r.exit_code == 0, r.output
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["msp.png", "overview.png", "tagood_tau=0.25.png"]
    for name in pngs:
        with Image.open(tmp_path / "plots" / name) as im:
            assert im.format == "PNG" and im.size[0] > 500 and len(np.unique(np.asarray(im.convert("L")))) > 10
