"""scores.npz: per-sample scores round-trip exactly, whatever the method names, and give the metric rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagood.bench.scores import load_scores, rows_from_scores, save_scores
from tagood.errors import InputError
from tagood.metrics import ood_metrics

_method = st.text(alphabet=st.sampled_from("abcz+[]=,._-/0123456789"), min_size=1, max_size=20)
_split = st.text(alphabet=st.sampled_from("abcz-_.0123456789"), min_size=1, max_size=10)
_scores = st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1, max_size=30)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(_method, st.dictionaries(_split, _scores, min_size=1, max_size=3), min_size=1, max_size=4))
def test_round_trip_is_exact(tmp_path_factory, data) -> None:
    path = tmp_path_factory.mktemp("s") / "scores.npz"
    ids = {split: [f"img/{i}.png" for i in range(len(v))] for per in data.values() for split, v in per.items()}
    save_scores(path, data, ids)
    back, back_ids = load_scores(path.parent)
    assert set(back) == set(data)
    for m, per in data.items():
        assert set(back[m]) == set(per)
        for split, v in per.items():
            np.testing.assert_array_equal(back[m][split], np.asarray(v, dtype=np.float64))
    assert back_ids == ids


def test_rows_are_the_metrics_of_the_scores(tmp_path) -> None:
    rng = np.random.default_rng(0)
    s = {"m[k=1]": {"test": rng.normal(size=50), "far": rng.normal(2, 1, 40), "near": rng.normal(0.5, 1, 30)}}
    rows = rows_from_scores(s)
    assert [r["ood"] for r in rows] == ["far", "near"]
    for r in rows:
        want = ood_metrics(s["m[k=1]"]["test"], s["m[k=1]"][r["ood"]])
        assert all(abs(r[k] - 100 * v) < 1e-12 for k, v in want.items())
    with pytest.raises(ValueError, match="no scores on the IND split 'test'"):
        rows_from_scores({"m": {"far": np.zeros(3)}})


def test_bad_inputs_are_clear(tmp_path) -> None:
    with pytest.raises(ValueError, match="without '/'"):
        save_scores(tmp_path / "s.npz", {"m": {"a/b": np.zeros(2)}})
    with pytest.raises(InputError, match="no per-sample scores"):
        load_scores(tmp_path)
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(InputError, match="holds no 'score/"):
        load_scores(tmp_path / "other.npz")
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind by the failed write


def test_scores_without_an_ood_split_are_refused_naming_the_file(tmp_path) -> None:
    """A scores.npz holding only the IND split gave an empty table with exit 0; now exit 2 naming the file."""
    from typer.testing import CliRunner

    from tagood.cli import app

    rng = np.random.default_rng(0)
    save_scores(tmp_path / "scores.npz", {"msp": {"test": rng.normal(size=20)}, "energy": {"test": rng.normal(size=20)}})
    with pytest.raises(InputError, match="no OOD split"):
        rows_from_scores(load_scores(tmp_path)[0])
    res = CliRunner().invoke(app, ["metrics", str(tmp_path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert str(tmp_path) in res.output and "no OOD split" in res.output and "unexpected" not in res.output
    assert not (tmp_path / "out" / "results.json").exists()
    # one OOD split is enough
    save_scores(tmp_path / "scores.npz", {"msp": {"test": rng.normal(size=20), "far": rng.normal(2, 1, 20)}})
    assert [r["ood"] for r in rows_from_scores(load_scores(tmp_path)[0])] == ["far"]
