"""`tagood fit --methods M` then `tagood score` for every registered detector (issue 21, deliverable 4): each is
fitted on a small real image folder (Fashion-MNIST PNGs, the real EfficientNet-Lite0), saved in the one format
(config.json + weights.safetensors, beside tagood.json) and scores new images from the saved directory; the
test-time ones are refused before any work, with the reason."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tagood
from image_folders import fashion_folder
from tagood.cli.main import app

runner = CliRunner()

#: small options, so that every method fits in seconds on a CPU (the defaults are the papers')
SMALL = {
    "knn": "knn[k=3]",
    "tagood": "tagood[epochs=1]",
    "ce+cs": "ce+cs[epochs=1]",
    "neglabel": "neglabel[max_candidates=200,n_neg=20,ngroup=4]",
    "csp": "csp[max_candidates=200,max_sim=1.01]",
    "krnft": "krnft[max_candidates=200,n_neg=20,epochs=1,shots=2,n_crops=4,k_in=1,k_out=1]",
    "locoop": "locoop[epochs=1,shots=2]",
}
VLM_ONLY = {"mcm", "glmcm", "neglabel", "csp", "krnft", "locoop", "adaneg"}
METHODS = tagood.available()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tagood_home) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("every")
    return {"train": fashion_folder(root / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 8, "train"),
            "new": fashion_folder(root / "new", {"trouser": 1, "coat": 4}, 2, offset=50),
            "cache": root / "cache", "root": root}


#: every registered method, in the default test run (about 70 s on 2 quiet cores, once the ONNX exports are cached)
@pytest.mark.parametrize("method", METHODS)
def test_fit_then_score(method: str, folders: dict[str, Path]) -> None:
    cls = tagood.detectors.get_class(method)
    if method in VLM_ONLY:
        pytest.importorskip("transformers")  # the offline dual encoder's text side (MiniLM)
    det = folders["root"] / f"det-{method}"
    spec = SMALL.get(method, method)
    r = runner.invoke(app, ["fit", str(folders["train"]), "--out", str(det), "--methods", spec,
                            "--cache", str(folders["cache"])], terminal_width=250)
    if cls.test_time or not cls.saveable:
        assert r.exit_code == 2 and f"cannot save '{method}'" in r.output and "test-time" in r.output, r.output
        assert not det.exists() and "Traceback" not in r.output
        return
    assert r.exit_code == 0, r.output
    meta = json.loads((det / "tagood.json").read_text())
    saved = json.loads((det / "config.json").read_text())
    assert meta["method"] == spec and saved["detector"] == method and (det / "weights.safetensors").is_file()
    reads_logits = "logits" in cls.requires or "model" in cls.context_requires
    assert (meta.get("head") == "head.safetensors") == reads_logits and (det / "head.safetensors").exists() == reads_logits
    out = folders["root"] / f"{method}.csv"
    r = runner.invoke(app, ["score", str(det), str(folders["new"]), "--out", str(out), "--cache", str(folders["cache"])],
                      terminal_width=250)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4 and {Path(x["path"]).parent.name for x in rows} == {"trouser", "coat"}
    assert all(math.isfinite(float(x["score"])) and x["is_ood"] in ("True", "False") for x in rows), rows
    again = folders["root"] / f"{method}-again.csv"
    r = runner.invoke(app, ["score", str(det), str(folders["new"]), "--out", str(again), "--cache", str(folders["cache"])],
                      terminal_width=250)
    assert r.exit_code == 0 and list(csv.DictReader(again.open())) == rows  # the saved detector is deterministic


def test_options_that_cannot_work_fail_before_extraction(tmp_path, folders) -> None:
    """knn's k above the training count: exit 2 and one line naming the option, nothing extracted or written."""
    r = runner.invoke(app, ["fit", str(folders["train"]), "--out", str(tmp_path / "d"), "--methods", "knn[k=500]",
                            "--cache", str(tmp_path / "c")], terminal_width=250)
    assert r.exit_code == 2 and "k" in r.output and "500" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "unexpected" not in r.output
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
