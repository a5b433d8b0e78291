"""The command line a person can follow (issue 15.3, 15.5, 15.7): run.log and --quiet, the annotated
example config, whole method descriptions, file names with brackets printed as given."""

from __future__ import annotations

import re
import typing

import numpy as np
from typer.testing import CliRunner

from image_folders import fashion_folder, folder_config
from tagood.cli.main import app
from tagood.cli.methods import description as _description

runner = CliRunner()


def _schema_keys() -> set[str]:
    """Every key a benchmark config may hold, from the config schema (top level, splits, backbones, options)."""
    from tagood.bench import schema as schemas

    models = [schemas.BenchConfig, schemas.BenchOptions, schemas.PseudoOOD, *schemas.SPLIT_TYPES.values(),
              *schemas.BACKBONES.values()]
    return {k for m in models for k in m.model_fields}


def test_example_config_loads_and_names_every_key_and_split_type(tmp_path):
    from tagood.bench import schema as schemas
    from tagood.bench.config import load_config

    r = runner.invoke(app, ["bench", "--example-config"])
    assert r.exit_code == 0, r.output
    text = r.output
    cfg_path = tmp_path / "bench.toml"
    cfg_path.write_text(text)
    cfg = load_config(cfg_path)  # the schema accepts it as printed
    assert cfg.name == "my-benchmark" and cfg.ood["textures"] == schemas.FolderSplit(type="folder", root="data/dtd")
    assert cfg.pseudo_ood == schemas.PseudoOOD(type="jigsaw", of="train", n=600)
    assert cfg.options.method_defaults["knn"] == {"k": 50}
    missing = sorted(k for k in _schema_keys() if not re.search(rf"(^|[\s#\[{{.]){re.escape(k)}(\s*=|\]|\.)", text, re.M))
    assert not missing, f"keys of the config schema not shown in the example config: {missing}"
    for t in schemas.SPLIT_TYPES:
        assert re.search(rf"^#\s+{re.escape(t)}\s", text, re.M), t
    for part in typing.get_args(schemas.ScenesSplit.model_fields["part"].annotation):
        assert part in text
    assert "flat folder" in text


def test_bench_help_says_where_keys_are_documented():
    r = runner.invoke(app, ["bench", "--help"], terminal_width=200)
    assert r.exit_code == 0 and "--example-config" in r.output and "docs/guides/bench-config.md" in r.output
    r = runner.invoke(app, ["bench"], terminal_width=200)
    assert r.exit_code == 2 and "--example-config" in r.output


def test_methods_prints_whole_first_paragraphs():
    from tagood import detectors

    r = runner.invoke(app, ["methods"], terminal_width=120)
    assert r.exit_code == 0, r.output
    flat = " ".join(re.sub(r"[│┃]", " ", r.output).split())
    for name in detectors.available():
        desc = _description(detectors.get_class(name).__doc__)
        assert desc and desc[-1] in ".)", (name, desc)  # a whole sentence, not the first line of one
        last = desc.split()[-1]
        assert last in flat, (name, last)
    assert _description("First line\n    goes on here.\n\n    Details.") == "First line goes on here."


def test_metrics_out_with_brackets_is_printed_as_given(tmp_path):
    from tagood.bench.scores import save_scores

    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    save_scores(run / "scores.npz", {"msp": {"test": rng.normal(size=40), "ood": rng.normal(1, size=30)}})
    out = tmp_path / "res[v2]"
    r = runner.invoke(app, ["metrics", str(run), "--out", str(out)], terminal_width=400)
    assert r.exit_code == 0, r.output
    assert f"{out / 'results.json'}" in r.output and (out / "results.json").is_file()


def test_quiet_bench_writes_run_log_and_prints_no_info_lines(tmp_path, tagood_home):
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8}, 12, "train")
    fashion_folder(tmp_path / "test", {"trouser": 1, "bag": 8}, 6)
    flat = tmp_path / "ood"
    fashion_folder(tmp_path / "tmp", {"sneaker": 7}, 6)
    flat.mkdir()
    for f in (tmp_path / "tmp" / "sneaker").iterdir():  # a flat folder of images is an OOD set
        f.rename(flat / f.name)
    cfg = folder_config(tmp_path / "b[1].toml", ["msp"], "sneakers")
    out = tmp_path / "out[x]"
    r = runner.invoke(app, ["bench", str(cfg), "--out", str(out), "--cache", str(tmp_path / "c"), "--quiet"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert " INFO " not in r.output and "IND accuracy" in r.output  # the table and summary, no log lines
    assert f"{out / 'run.log'}" in r.output
    log = (out / "run.log").read_text()
    assert "method 1/1: msp (fit, then score 2 split(s))" in log and "IND accuracy of the linear head" in log
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO    tagood\.bench\.runner: tagood \S+: ", log, re.M)
    lines = log.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR)", ln) for ln in lines), lines[:5]
    r = runner.invoke(app, ["bench", str(cfg), "--out", str(out), "--cache", str(tmp_path / "c"), "-q", "-v"])
    assert r.exit_code == 2 and "exclude each other" in r.output


def test_fit_and_score_print_bracketed_paths_as_given(tmp_path, tagood_home):
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8}, 15, "train")
    fashion_folder(tmp_path / "new", {"trouser": 1}, 4, offset=100)
    det = tmp_path / "det[/]"  # a folder "]" inside a folder "det["
    r = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(det), "--methods", "cs", "--cache", str(tmp_path / "c")],
                      terminal_width=400)
    assert r.exit_code == 0, r.output
    assert f"to {det};" in r.output and (det / "tagood.json").is_file()
    out = tmp_path / "scores[v2].csv"
    r = runner.invoke(app, ["score", str(det), str(tmp_path / "new"), "--out", str(out), "--cache", str(tmp_path / "c")],
                      terminal_width=400)
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output and out.is_file()
