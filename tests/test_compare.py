"""The paired comparison as a library function (:func:`tagood.bench.compare.compare`): its doctest, the same numbers
as `tagood metrics --compare`, a run directory or the scores themselves as input, errors that name what to pass."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import tagood.bench.compare as compare_module
from tagood.bench.compare import ComparisonResult, Difference, compare
from tagood.bench.intervals import paired_difference
from tagood.bench.scores import save_scores
from tagood.cli.main import app
from tagood.errors import ConfigError, InputError
from tagood.metrics import ood_metrics


def _scores(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    ind, near, far = rng.normal(0, 1, 120), rng.normal(0.7, 1, 80), rng.normal(2, 1, 90)
    blur = {k: rng.normal(0, 1.5, len(v)) for k, v in (("test", ind), ("near", near), ("far", far))}
    good = {"test": ind, "near": near, "far": far}
    return {"good": good, "knn[k=3]": {k: v + blur[k] for k, v in good.items()}}


def test_docstring_example_runs() -> None:
    res = doctest.testmod(compare_module, verbose=False)
    assert res.attempted >= 5 and res.failed == 0


def test_result_is_typed_and_equals_the_bootstrap() -> None:
    s = _scores()
    res = compare(s, "good", "knn[k=3]", n_boot=150, level=0.9, seed=3)
    assert isinstance(res, ComparisonResult)
    assert (res.a, res.b, res.n_boot, res.level, res.seed) == ("good", "knn[k=3]", 150, 0.9, 3)
    assert set(res.sets) == {"near", "far", "average"}
    raw = paired_difference(s["good"], s["knn[k=3]"], 150, 0.9, 3)
    for k, by in res.sets.items():
        for m, d in by.items():
            assert isinstance(d, Difference) and d == Difference(**raw[k][m]), (k, m)
    far = res.sets["far"]["auroc"]
    assert far.a == pytest.approx(100 * ood_metrics(s["good"]["test"], s["good"]["far"])["auroc"])
    assert far.diff == pytest.approx(far.a - far.b) and far.low <= far.diff <= far.high
    assert compare(s, "good", "knn[k=3]", n_boot=150, level=0.9, seed=3) == res  # seeded
    assert json.loads(json.dumps(res.to_dict()))["sets"]["far"]["auroc"]["diff"] == far.diff


def test_cli_writes_what_the_library_returns(tmp_path) -> None:
    s = _scores(1)
    save_scores(tmp_path / "run" / "scores.npz", s)
    r = CliRunner().invoke(app, ["metrics", str(tmp_path / "run"), "--compare", "good,knn[k=3]", "--bootstrap", "120",
                                 "--seed", "5", "--out", str(tmp_path / "o")], terminal_width=250)
    assert r.exit_code == 0, r.output
    written = json.loads((tmp_path / "o" / "comparison.json").read_text())
    from_dir = compare(tmp_path / "run", "good", "knn[k=3]", n_boot=120, seed=5)  # a run directory, as the CLI reads it
    from_file = compare(str(tmp_path / "run" / "scores.npz"), "good", "knn[k=3]", n_boot=120, seed=5)
    assert written == from_dir.to_dict() == from_file.to_dict()
    assert from_dir == compare(s, "good", "knn[k=3]", n_boot=120, seed=5)


def test_errors_name_what_to_pass(tmp_path) -> None:
    s = _scores()
    with pytest.raises(ConfigError, match=r"no scores for \['nope'\]; the methods scored are \['good', 'knn\[k=3\]'\]"):
        compare(s, "good", "nope")
    with pytest.raises(ConfigError, match="two different methods"):
        compare(s, "good", "good")
    with pytest.raises(ConfigError, match="n_boot"):
        compare(s, "good", "knn[k=3]", n_boot=1)
    with pytest.raises(ConfigError, match="level"):
        compare(s, "good", "knn[k=3]", level=1.0)
    short = {**s, "knn[k=3]": {**s["knn[k=3]"], "far": s["knn[k=3]"]["far"][:10]}}
    with pytest.raises(InputError, match="needs the same samples"):
        compare(short, "good", "knn[k=3]")
    with pytest.raises(InputError, match="no per-sample scores"):
        compare(tmp_path, "good", "knn[k=3]")
