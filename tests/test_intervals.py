"""Bootstrap intervals of the OOD metrics: coverage of a known AUROC, shrinking with the sample size, seeded;
`tagood metrics --bootstrap` writes them into the results."""

from __future__ import annotations

import json
import re
from math import erf, sqrt

import numpy as np
import pytest
from typer.testing import CliRunner

from tagood.bench.intervals import bootstrap_intervals
from tagood.bench.scores import save_scores
from tagood.cli.main import app
from tagood.metrics import ood_metrics


def _draw(rng: np.random.Generator, n: int, d: float) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(0.0, 1.0, n), rng.normal(d, 1.0, n)  # OOD scores higher: more OOD


def test_covers_the_true_auroc_about_as_often_as_promised() -> None:
    d = 1.0
    true_auroc = 100 * 0.5 * (1 + erf(d / sqrt(2) / sqrt(2)))  # P(IND < OOD) = Phi(d / sqrt 2)
    rng = np.random.default_rng(0)
    hits = 0
    reps = 150
    for r in range(reps):
        s_id, s_ood = _draw(rng, 150, d)
        lo, hi = bootstrap_intervals(s_id, {"ood": s_ood}, n_boot=300, seed=r)["ood"]["auroc"]
        hits += lo <= true_auroc <= hi
    assert 0.88 <= hits / reps <= 0.99, hits  # 95% promised; binomial sd 1.8 points at 150 draws


def test_contains_the_estimate_shrinks_with_n_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    small, large = _draw(rng, 100, 1.0), _draw(rng, 1600, 1.0)
    ci_small = bootstrap_intervals(small[0], {"a": small[1], "b": small[1] + 0.5}, n_boot=300)
    ci_large = bootstrap_intervals(large[0], {"a": large[1]}, n_boot=300)
    for k in ("auroc", "fpr95", "aupr_in"):
        est = 100 * ood_metrics(small[0], small[1])[k]
        assert ci_small["a"][k][0] <= est <= ci_small["a"][k][1], k
    width = lambda ci: ci["a"]["auroc"][1] - ci["a"]["auroc"][0]  # noqa: E731
    assert width(ci_large) < 0.5 * width(ci_small)  # 16x the samples: about a quarter of the width
    avg = (100 * ood_metrics(small[0], small[1])["auroc"] + 100 * ood_metrics(small[0], small[1] + 0.5)["auroc"]) / 2
    assert ci_small["average"]["auroc"][0] <= avg <= ci_small["average"]["auroc"][1]
    again = bootstrap_intervals(small[0], {"a": small[1], "b": small[1] + 0.5}, n_boot=300)
    assert again == ci_small and bootstrap_intervals(small[0], {"a": small[1]}, n_boot=300, seed=1) != ci_large
    with pytest.raises(ValueError, match="level"):
        bootstrap_intervals(small[0], {"a": small[1]}, level=1.5)


def test_metrics_command_adds_intervals(tmp_path) -> None:
    rng = np.random.default_rng(2)
    s_id, s_ood = _draw(rng, 200, 1.5)
    save_scores(tmp_path / "scores.npz", {"m": {"test": s_id, "far": s_ood}})
    r = CliRunner().invoke(app, ["metrics", str(tmp_path), "--bootstrap", "200", "--out", str(tmp_path / "o")],
                           terminal_width=250)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    row = next(x for x in res["rows"] if x["ood"] == "far")
    assert row["ci"]["n_boot"] == 200 and row["ci"]["auroc"][0] <= row["auroc"] <= row["ci"]["auroc"][1]
    md = (tmp_path / "o" / "results.md").read_text()
    assert f"{row['auroc']:.2f} [{row['ci']['auroc'][0]:.2f}, " in md and "percentile-bootstrap" in md
    assert "auroc_ci_low" in (tmp_path / "o" / "results.csv").read_text().splitlines()[0]


def test_paired_difference() -> None:
    from tagood.bench.intervals import paired_difference

    rng = np.random.default_rng(3)
    s_id, near, far = rng.normal(0, 1, 300), rng.normal(0.8, 1, 200), rng.normal(2, 1, 200)
    noise = {k: rng.normal(0, 1.5, n) for k, n in (("test", 300), ("near", 200), ("far", 200))}
    good = {"test": s_id, "near": near, "far": far}
    worse = {k: v + noise[k] for k, v in good.items()}  # the same samples, scores blurred: lower AUROC
    same = paired_difference(good, good, n_boot=200)
    assert all(d["diff"] == d["low"] == d["high"] == 0.0 and d["p"] == 1.0 for by in same.values() for d in by.values())
    res = paired_difference(good, worse, n_boot=400)
    for k in ("near", "far", "average"):
        d = res[k]["auroc"]
        assert d["diff"] == pytest.approx(d["a"] - d["b"]) and d["diff"] > 0 and d["low"] > 0 and d["p"] < 0.01, (k, d)
    flipped = paired_difference(worse, good, n_boot=400)
    assert flipped["far"]["auroc"]["diff"] == pytest.approx(-res["far"]["auroc"]["diff"])
    assert flipped["far"]["auroc"]["low"] == pytest.approx(-res["far"]["auroc"]["high"])
    with pytest.raises(ValueError, match="same samples"):
        paired_difference(good, {**good, "far": far[:10]})


def test_metrics_compare_command(tmp_path) -> None:
    rng = np.random.default_rng(4)
    s_id, s_ood = _draw(rng, 150, 1.0)
    save_scores(tmp_path / "scores.npz",
                {"a": {"test": s_id, "x": s_ood}, "b[k=2]": {"test": s_id + rng.normal(0, 2, 150), "x": s_ood}})
    r = CliRunner().invoke(app, ["metrics", str(tmp_path), "--compare", "a,b[k=2]", "--bootstrap", "200",
                                 "--out", str(tmp_path / "o")],
                           terminal_width=250)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "comparison.json").read_text())
    assert res["a"] == "a" and res["b"] == "b[k=2]" and set(res["sets"]) == {"x", "average"}
    assert "a minus b[k=2]" in r.output
    table = CliRunner().invoke(app, ["metrics", str(tmp_path), "--bootstrap", "50"], terminal_width=250)
    assert table.exit_code == 0 and "b[k=2]" in table.output  # variant options are not eaten as rich markup
    assert re.search(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", table.output)  # value [low, high] in the terminal too
    bad = CliRunner().invoke(app, ["metrics", str(tmp_path), "--compare", "a"], terminal_width=250)
    assert bad.exit_code == 2 and "two methods" in bad.output
