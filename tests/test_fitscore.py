"""`tagood fit` / `tagood score` with a real tagger from files on disk (tiny RAM in the official layout),
moved weights, and folders streamed from the feature cache."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tagood.cli import app
from image_folders import fashion_folder
from tiny_models import write_tiny_ram

runner = CliRunner()


def _scores(path: Path) -> dict[str, float]:
    return {r["path"]: float(r["score"]) for r in csv.DictReader(path.open())}


def test_fit_and_score_with_ram_from_disk(tmp_path, tagood_home):
    ram = write_tiny_ram(tmp_path / "weights")
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 12, "train")
    fashion_folder(tmp_path / "new", {"trouser": 1, "coat": 4}, 3, offset=50)
    det, cache = tmp_path / "det", tmp_path / "c"
    r = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(det), "--method", "tagood[epochs=2]",
                            "--backbone", "ram", "--checkpoint", str(ram.checkpoint), "--tags", str(ram.tag_list),
                            "--thresholds", str(ram.thresholds), "--cache", str(cache)], terminal_width=200)
    assert r.exit_code == 0, r.output
    meta = json.loads((det / "tagood.json").read_text())
    spec = meta["backbone"]["spec"]
    assert spec["name"] == "ram" and Path(spec["checkpoint"]).is_absolute() and Path(spec["checkpoint"]) == ram.checkpoint.resolve()
    # RAM's per-tag thresholds reach the detector's tag rule (they are the tagger's, not a global default)
    rule = json.loads((det / "config.json").read_text())["rule"]["threshold"]
    np.testing.assert_allclose(rule, np.loadtxt(ram.thresholds), atol=1e-6)

    r = runner.invoke(app, ["score", str(det), str(tmp_path / "new"), "--out", str(tmp_path / "a.csv"), "--cache", str(cache)],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    first = _scores(tmp_path / "a.csv")
    assert len(first) == 6 and all(np.isfinite(list(first.values())))

    # the weights moved: a clear error naming the file and the option, then the option fixes it
    moved = tmp_path / "elsewhere"
    shutil.move(str(tmp_path / "weights"), moved)
    r = runner.invoke(app, ["score", str(det), str(tmp_path / "new"), "--out", str(tmp_path / "b.csv")], terminal_width=200)
    assert r.exit_code == 2 and "ram_tiny.pth" in r.output and "--checkpoint" in r.output
    r = runner.invoke(app, ["score", str(det), str(tmp_path / "new"), "--out", str(tmp_path / "b.csv"), "--cache", str(cache),
                            "--checkpoint", str(moved / "ram_tiny.pth"), "--tags", str(moved / "ram_tag_list.txt"),
                            "--thresholds", str(moved / "ram_tag_list_threshold.txt")], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert _scores(tmp_path / "b.csv") == first

    # other weights are refused
    other = write_tiny_ram(tmp_path / "other", seed=1)
    r = runner.invoke(app, ["score", str(det), str(tmp_path / "new"), "--checkpoint", str(other.checkpoint),
                            "--tags", str(other.tag_list), "--thresholds", str(other.thresholds)], terminal_width=200)
    assert r.exit_code == 2 and "fitted with backbone weights" in r.output


def test_streamed_fit_and_score_equal_in_memory(tmp_path, tagood_home):
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 20, "train")
    fashion_folder(tmp_path / "new", {"trouser": 1, "coat": 4}, 4, offset=60)
    out = {}
    for mode, limit in (("mem", "-1"), ("stream", "0")):
        det = tmp_path / f"det-{mode}"
        r = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(det), "--method", "tagood[epochs=2]",
                                "--cache", str(tmp_path / "c"), "--stream-above-gb", limit], terminal_width=200)
        assert r.exit_code == 0, r.output
        meta = json.loads((det / "tagood.json").read_text())
        assert bool(meta["streamed"]) == (mode == "stream")
        r = runner.invoke(app, ["score", str(det), str(tmp_path / "new"), "--out", str(tmp_path / f"{mode}.csv"),
                                "--cache", str(tmp_path / "c"), "--stream-above-gb", limit], terminal_width=200)
        assert r.exit_code == 0, r.output
        out[mode] = (meta["threshold"], _scores(tmp_path / f"{mode}.csv"))
    assert out["stream"][0] == out["mem"][0]
    assert out["stream"][1].keys() == out["mem"][1].keys()
    np.testing.assert_allclose(list(out["stream"][1].values()), list(out["mem"][1].values()), rtol=1e-5, atol=1e-5)


KRNFT_SMALL = "krnft[max_candidates=300,n_neg=40,epochs=1,shots=4,n_crops=4,k_in=1,k_out=1]"


def test_fit_and_score_krnft_on_the_offline_dual_encoder(tmp_path, tagood_home):
    """KR-NFT deployed like TagOOD: fitted on a folder (its few-shot picks dual-encoded), saved, and scoring
    new images from their files; the saved detector scores exactly like the fitted one."""
    pytest.importorskip("transformers")
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 12, "train")
    fashion_folder(tmp_path / "new", {"trouser": 1, "coat": 4}, 3, offset=50)
    det, cache = tmp_path / "det", tmp_path / "c"
    r = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(det), "--method", KRNFT_SMALL, "--cache", str(cache)],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    meta = json.loads((det / "tagood.json").read_text())
    assert meta["dual_encoder"] == {"name": "offline"} and meta["n_train"] == 3 * 4  # the few-shot picks only
    assert (det / "krnft.safetensors").exists()
    r = runner.invoke(app, ["score", str(det), str(tmp_path / "new"), "--out", str(tmp_path / "k.csv"), "--cache", str(cache)],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    got = _scores(tmp_path / "k.csv")
    assert len(got) == 6 and all(-1.0 <= v <= 0.0 for v in got.values())  # minus the IND probability mass

    # the same images scored in Python with the loaded detector and the offline encoder
    from tagood.bench.models import build_backbone
    from tagood.data import FolderSource
    from tagood.extract import extract_split
    from tagood.vlm import build_dual_encoder
    from tagood.vlm.krnft import KRNFT

    src = FolderSource(tmp_path / "new")
    fs = extract_split(src, build_backbone({}), tmp_path / "c2", split="x", fields=["features"], progress=False).to_featureset(["features"])
    build_dual_encoder(None).attach(fs, src)
    want = dict(zip(fs.paths, KRNFT.load(det).score(fs)))
    assert {Path(k).name + Path(k).parent.name for k in got} == {Path(k).name + Path(k).parent.name for k in want}
    for k, v in got.items():
        assert abs(v - next(w for p, w in want.items() if Path(p).parts[-2:] == Path(k).parts[-2:])) < 1e-6

    bad = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(tmp_path / "d2"), "--method", "krnft",
                              "--backbone", "ram", "--checkpoint", str(tmp_path / "x.pth")], terminal_width=200)
    assert bad.exit_code == 2 and "need a dual encoder" in bad.output
