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


def test_percentile_interval_ends_are_the_binomial_quantiles() -> None:
    """A case whose bootstrap distribution is known in closed form: every IND score 0, the OOD scores -1 or +1 (4 of
    20 at +1), so a replicate's AUROC is K / 20 with K ~ Binomial(20, 0.2) (the IND resample is always all 0s). At
    level 0.5 the interval is the 25% and 75% quantiles of K / 20: 3 / 20 and 5 / 20 (CDF 0.206 at 2, 0.411 at 3,
    0.804 at 5 and 0.630 at 4: every end at least 6 binomial standard errors of 1000 replicates from a step)."""
    s_id = np.zeros(30)
    s_ood = np.r_[np.ones(4), -np.ones(16)]
    ci = bootstrap_intervals(s_id, {"x": s_ood}, n_boot=1000, level=0.5, seed=5)
    assert ci["x"]["auroc"] == (15.0, 25.0) and ci["average"]["auroc"] == (15.0, 25.0)
    # at level 0.9: the 5% quantile is 1 / 20 (CDF 0.0115 at 0, 0.069 at 1), the 95% one 7 / 20 (0.913 at 6, 0.968 at 7)
    assert bootstrap_intervals(s_id, {"x": s_ood}, n_boot=1000, level=0.9, seed=5)["x"]["auroc"] == (5.0, 35.0)


def test_interval_of_each_set_and_of_their_average() -> None:
    """Two OOD sets far apart: each set's interval holds its own AUROC and not the other's; the average's holds the
    mean of the two and lies between them."""
    rng = np.random.default_rng(6)
    s_id, near, far = rng.normal(0, 1, 200), rng.normal(0.3, 1, 200), rng.normal(3, 1, 200)
    ci = bootstrap_intervals(s_id, {"near": near, "far": far}, n_boot=300, seed=1)
    a_near, a_far = 100 * ood_metrics(s_id, near)["auroc"], 100 * ood_metrics(s_id, far)["auroc"]
    assert list(ci) == ["near", "far", "average"]
    assert ci["near"]["auroc"][0] < a_near < ci["near"]["auroc"][1] < a_far
    assert a_near < ci["far"]["auroc"][0] < a_far < ci["far"]["auroc"][1]
    lo, hi = ci["average"]["auroc"]
    assert ci["near"]["auroc"][1] < lo < (a_near + a_far) / 2 < hi < ci["far"]["auroc"][0]


def test_add_intervals_puts_each_methods_interval_on_its_own_rows() -> None:
    """Two methods, two OOD sets: every row gets the interval of its own method and set (which holds the row's value
    and not the other method's), the rows of a method without scores get none."""
    from tagood.bench.intervals import add_intervals

    rng = np.random.default_rng(7)
    s_id = rng.normal(0, 1, 150)
    scores = {"good": {"test": s_id, "a": rng.normal(3, 1, 120), "b": rng.normal(2, 1, 100)},
              "coin": {"test": rng.normal(0, 1, 150), "a": rng.normal(0, 1, 120), "b": rng.normal(0.8, 1, 100)}}
    rows = [{"method": m, "ood": k, "auroc": 100 * ood_metrics(per["test"], per[k])["auroc"]}
            for m, per in scores.items() for k in ("a", "b")]
    rows.append({"method": "good", "ood": "average",
                 "auroc": sum(r["auroc"] for r in rows if r["method"] == "good") / 2})
    rows.append({"method": "other", "ood": "a", "auroc": 50.0})
    res = add_intervals({"rows": rows}, scores, n_boot=200, level=0.9, seed=3)
    assert res["rows"] is rows
    by = {(r["method"], r["ood"]): r for r in rows}
    for (m, k), r in by.items():
        if m == "other":
            assert "ci" not in r
            continue
        lo, hi = r["ci"]["auroc"]
        assert r["ci"]["level"] == 0.9 and r["ci"]["n_boot"] == 200 and lo < r["auroc"] < hi, (m, k)
        for (m2, k2), r2 in by.items():
            if (m2, k2) != (m, k) and m2 != "other" and not (k == "average" or k2 == "average"):
                assert not lo <= r2["auroc"] <= hi, ((m, k), (m2, k2))  # another row's value is outside
    # the interval of a row is the one bootstrap_intervals gives its method alone
    alone = bootstrap_intervals(scores["coin"]["test"], {"a": scores["coin"]["a"], "b": scores["coin"]["b"]},
                                n_boot=200, level=0.9, seed=3)
    assert tuple(by[("coin", "b")]["ci"]["fpr95"]) == alone["b"]["fpr95"]
    # a differently named IND split
    renamed = {"good": {"ind": scores["good"]["test"], "a": scores["good"]["a"]}}
    one = add_intervals({"rows": [{"method": "good", "ood": "a"}]}, renamed, n_boot=50, ind="ind")
    assert one["rows"][0]["ci"]["auroc"][0] > 90.0


def test_paired_interval_holds_the_observed_difference_and_has_width() -> None:
    """On random data (two methods with differently blurred scores of the same samples) the paired interval of every
    set, the average and every metric holds the observed difference, strictly inside for the AUROC, and has width."""
    from tagood.bench.intervals import paired_difference

    rng = np.random.default_rng(8)
    good = {"test": rng.normal(0, 1, 250), "near": rng.normal(1, 1, 180), "far": rng.normal(2, 1, 160)}
    a = {k: v + rng.normal(0, 0.7, len(v)) for k, v in good.items()}
    b = {k: v + rng.normal(0, 0.9, len(v)) for k, v in good.items()}
    res = paired_difference(a, b, n_boot=300, seed=2)
    assert set(res) == {"near", "far", "average"}
    for k in ("near", "far"):
        exp = 100 * (ood_metrics(a["test"], a[k])["auroc"] - ood_metrics(b["test"], b[k])["auroc"])
        d = res[k]["auroc"]
        assert d["diff"] == pytest.approx(exp, abs=1e-9) and d["low"] < d["diff"] < d["high"], (k, d)
        assert d["a"] == pytest.approx(100 * ood_metrics(a["test"], a[k])["auroc"], abs=1e-9)
    for k, by in res.items():
        for m, d in by.items():
            assert d["high"] > d["low"] and d["low"] <= d["diff"] <= d["high"] and 0.0 < d["p"] <= 1.0, (k, m, d)


def test_paired_bootstrap_known_distribution() -> None:
    """Known answer: every IND score 0; 12 OOD samples, A and B agree (+1) on 9 and A alone flags 3 (A +1, B -1). A
    replicate's AUROC difference is 100 K / 12, K ~ Binomial(12, 1/4): the observed difference is 25, p is twice
    P(K = 0) = 2 x 0.75^12 = 0.063 (no replicate is below 0, so that is the smaller tail), and at level 0.6 the
    interval is the 20% and 80% quantiles, 2 / 12 and 4 / 12 (CDF 0.158 at 1, 0.391 at 2, 0.649 at 3, 0.842 at 4)."""
    from tagood.bench.intervals import paired_difference

    a = {"test": np.zeros(15), "x": np.ones(12)}
    b = {"test": np.zeros(15), "x": np.r_[-np.ones(3), np.ones(9)]}
    d = paired_difference(a, b, n_boot=1500, level=0.6, seed=4)["x"]["auroc"]
    assert (d["a"], d["b"], d["diff"]) == (100.0, 75.0, 25.0)
    assert (d["low"], d["high"]) == pytest.approx((100 * 2 / 12, 100 * 4 / 12), abs=1e-9)
    assert d["p"] == pytest.approx(2 * 0.75**12, abs=0.02)  # binomial standard error of 1500 replicates: 0.009
    # B minus A draws the same samples: every replicate negated, so the other tail is the smaller one, the same p
    back = paired_difference(b, a, n_boot=1500, level=0.6, seed=4)["x"]["auroc"]
    assert back["diff"] == -25.0 and back["p"] == d["p"]
    assert (back["low"], back["high"]) == pytest.approx((-100 * 4 / 12, -100 * 2 / 12), abs=1e-9)


def test_paired_p_value_counts_only_replicates_at_or_below_zero() -> None:
    """Small differences: 200 OOD samples, A alone flags 3, so a replicate's difference is K / 2 points with
    K ~ Binomial(200, 0.015); p = 2 P(K = 0) = 2 x 0.985^200 = 0.097, although a quarter of the replicates lie in
    (0, 1] points."""
    from tagood.bench.intervals import paired_difference

    a = {"test": np.zeros(10), "x": np.ones(200)}
    b = {"test": np.zeros(10), "x": np.r_[-np.ones(3), np.ones(197)]}
    d = paired_difference(a, b, n_boot=400, seed=6)["x"]["auroc"]
    assert d["diff"] == 1.5 and d["p"] == pytest.approx(2 * 0.985**200, abs=0.06)  # standard error 0.021


def test_defaults_and_argument_checks() -> None:
    """The documented defaults (1000 replicates, level 0.95, seed 0, IND split "test") and the ranges of n_boot
    (at least 2) and level (strictly between 0 and 1)."""
    from tagood.bench.intervals import add_intervals, paired_difference
    from tagood.errors import ConfigError, InputError

    rng = np.random.default_rng(9)
    s_id, s_ood = rng.normal(0, 1, 12), rng.normal(1, 1, 10)
    assert bootstrap_intervals(s_id, {"x": s_ood}) == bootstrap_intervals(s_id, {"x": s_ood}, 1000, 0.95, 0)
    per = {"test": s_id, "x": s_ood}
    other = {"test": s_id + rng.normal(0, 1, 12), "x": s_ood}
    assert paired_difference(per, other) == paired_difference(per, other, 1000, 0.95, 0, "test")
    rows = lambda: {"rows": [{"method": "m", "ood": "x"}]}  # noqa: E731
    assert add_intervals(rows(), {"m": per}) == add_intervals(rows(), {"m": per}, 1000, 0.95, 0, "test")
    assert bootstrap_intervals(s_id, {"x": s_ood}, n_boot=2)["x"]["auroc"][0] <= 100.0  # 2 replicates are enough
    for bad in ({"n_boot": 1}, {"level": 0.0}, {"level": 1.0}, {"level": -0.1}):
        with pytest.raises(ConfigError):
            bootstrap_intervals(s_id, {"x": s_ood}, **bad)
    with pytest.raises(InputError, match="no OOD set"):
        bootstrap_intervals(s_id, {})
    with pytest.raises(InputError, match="including 'test'"):
        paired_difference({"x": s_ood}, {"x": s_ood})  # the same splits, but no IND split
    with pytest.raises(InputError, match="including 'test'"):
        paired_difference(per, {"test": s_id, "y": s_ood})


def test_every_ind_sample_is_drawn() -> None:
    """One IND sample above every OOD score: a replicate's AUROC is 100 - 10 K, K ~ Binomial(10, 0.1) the draws of
    it; 1 - 0.9^10 = 65% of the replicates draw it, 35% do not, so the interval runs from below 100 up to 100 (a
    resampling that skipped the first sample would give 100 alone)."""
    s_id = np.r_[10.0, np.zeros(9)]
    lo, hi = bootstrap_intervals(s_id, {"x": np.full(10, 5.0)}, n_boot=200)["x"]["auroc"]
    assert lo <= 80.0 and hi == 100.0 and (100.0 - lo) % 10 == 0
