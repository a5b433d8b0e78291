"""The `tagood` command line end to end on real images and the real backbone."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from image_folders import fashion_folder, folder_config
from tagood.cli.main import app

runner = CliRunner()


def test_methods_lists_every_detector():
    r = runner.invoke(app, ["methods"], terminal_width=200)
    assert r.exit_code == 0, r.output
    for name in ("msp", "odin", "featurenorm", "vim", "tagood", "ce+cs"):
        assert name in r.output


@pytest.mark.slow  # about 50 s on two cores
def test_demo_quick_writes_results(tmp_path, tagood_home):
    out = tmp_path / "out"
    r = runner.invoke(app, ["demo", "--benchmark", "fashion", "--quick", "--out", str(out), "--cache", str(tmp_path / "cache"),
                            "--methods", "msp,energy,knn,featurenorm,tagood[epochs=2]", "--plots"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "tagood[epochs=2]" in r.output  # the terminal table keeps the variant's options
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == sorted(
        ["overview.png", "msp.png", "energy.png", "knn.png", "featurenorm.png", "tagood_epochs=2.png",
         "tokens-tagood_epochs=2.png"])
    res = json.loads((out / "results.json").read_text())
    methods = {"msp", "energy", "knn", "featurenorm", "tagood[epochs=2]"}
    sets = {"fashion-near", "mnist", "digits"}
    assert {(row["method"], row["ood"]) for row in res["rows"]} == {(m, s) for m in methods for s in sets | {"average"}}
    assert 0 <= res["id_accuracy"] <= 100 and res["id_accuracy"] > 50
    for row in res["rows"]:
        assert 0 <= row["auroc"] <= 100 and 0 <= row["fpr95"] <= 100
    md = (out / "results.md").read_text()
    assert "| msp |" in md and "average AUROC" in md
    assert len(list(csv.reader((out / "results.csv").open()))) == 1 + len(res["rows"])
    assert res["meta"]["sizes"]["train"] == 360 and res["meta"]["versions"]["torch"]
    from tagood.runtime.threads import budget

    assert res["meta"]["threads"]["budget"] == budget() >= 1  # what the float rounding of the run depended on
    assert res["meta"]["threads"]["omp_wait_policy"] in ("default", "PASSIVE", "ACTIVE")
    assert isinstance(res["meta"]["threads"]["machine_busy"], bool)

    # per-sample scores: the table is a function of them, recomputed without the models by `tagood metrics`
    from tagood.bench.scores import load_scores

    scores, ids = load_scores(out)
    assert set(scores) == methods and all(set(per) == sets | {"test"} for per in scores.values())
    for split in sets | {"test"}:
        assert len(ids[split]) == res["meta"]["sizes"][split] == len(scores["msp"][split])
        assert len(set(ids[split])) == len(ids[split])
    r = runner.invoke(app, ["metrics", str(out), "--out", str(tmp_path / "again"), "--methods", "msp,tagood[epochs=2]"],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    want = {(x["method"], x["ood"]): x for x in res["rows"] if x["method"] in ("msp", "tagood[epochs=2]")}
    assert {(x["method"], x["ood"]) for x in again["rows"]} == set(want)
    for x in again["rows"]:
        for k in ("auroc", "fpr95", "fpr95_ood_pos", "aupr_in", "aupr_out"):
            assert abs(x[k] - want[(x["method"], x["ood"])][k]) < 1e-9, (x, k)
    r = runner.invoke(app, ["metrics", str(out), "--methods", "nope"], terminal_width=200)
    assert r.exit_code == 2 and "no scores for ['nope']" in r.output


def test_bench_config_with_folders_and_a_corrupt_file(tmp_path, tagood_home):
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8}, 20, "train")
    fashion_folder(tmp_path / "test", {"trouser": 1, "bag": 8}, 10)
    fashion_folder(tmp_path / "ood", {"sneaker": 7}, 10)
    (tmp_path / "ood" / "sneaker" / "zz_broken.png").write_bytes(b"not a png")
    cfg = folder_config(tmp_path / "bench.toml", ["msp", "mahalanobis"], "sneakers", name="mine")
    r = runner.invoke(app, ["bench", str(cfg), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "zz_broken.png" in r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [f["ident"].endswith("zz_broken.png") for f in res["meta"]["failed_images"]["sneakers"]] == [True]
    assert res["meta"]["sizes"]["sneakers"] == 10


def test_bad_config_is_a_clear_error(tmp_path):
    cfg = tmp_path / "b.toml"
    cfg.write_text('name = "x"\n[train]\ntype = "folder"\nroot = "a"\n')
    r = runner.invoke(app, ["bench", str(cfg)], terminal_width=200)
    assert r.exit_code == 2 and "missing [test]" in r.output


def test_fit_then_score(tmp_path, tagood_home):
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 30, "train")
    fashion_folder(tmp_path / "new", {"trouser": 1}, 5, offset=100)
    (tmp_path / "new" / "broken.jpg").write_text("nope")
    det = tmp_path / "det"
    r = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(det), "--methods", "tagood[epochs=3]",
                            "--cache", str(tmp_path / "c")], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert (det / "weights.safetensors").exists()
    assert json.loads((det / "tagood.json").read_text())["classes"] == ["bag", "sandal", "trouser"]
    r = runner.invoke(app, ["score", str(det), str(tmp_path / "new"), "--out", str(tmp_path / "s.csv"),
                            "--cache", str(tmp_path / "c")],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(rows) == 5 and all(float(x["score"]) == float(x["score"]) for x in rows)
    assert "broken.jpg" in r.output


def test_fit_refuses_a_test_time_method_before_any_work(tmp_path):
    fashion_folder(tmp_path / "train", {"bag": 8}, 2, "train")
    r = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(tmp_path / "d"), "--methods", "adaneg",
                            "--cache", str(tmp_path / "c")], terminal_width=250)
    assert r.exit_code == 2 and "`tagood fit` cannot save 'adaneg': test-time" in r.output, r.output
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


@pytest.mark.slow  # every method of the quick scenes demo end to end: 568 s inside the parallel suite on 2 shared cores
def test_full_quick_demo_all_methods(tmp_path, tagood_home):
    """Every default method of the built-in benchmark, ODIN's input perturbation included (~2 min on 2 cores)."""
    r = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")], terminal_width=200)
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    from tagood.bench.config import default_methods

    assert {row["method"] for row in res["rows"]} == set(default_methods())
    assert {"mcm", "glmcm", "locoop"} <= {row["method"] for row in res["rows"]}
    assert not res["meta"]["errors"]


def test_bad_method_spec_fails_before_extraction(tmp_path):
    r = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c"),
                            "--methods", "msp,knn[k=abc]"], terminal_width=200)
    assert r.exit_code == 2 and "option k is a number" in r.output
    assert not (tmp_path / "c").exists()  # nothing was extracted
