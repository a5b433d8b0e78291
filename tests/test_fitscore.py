"""`tagood fit` / `tagood score` with a real tagger from files on disk (tiny RAM in the official layout),
moved weights, and folders streamed from the feature cache."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from image_folders import fashion_folder
from tagood.cli.main import app
from tagood.detectors.tagood.scores import NO_TAG_SCORE
from tagood.pipeline.fitscore import decision_threshold, is_ood
from tiny_models import write_tiny_ram

runner = CliRunner()


def _scores(path: Path) -> dict[str, float]:
    return {r["path"]: float(r["score"]) for r in csv.DictReader(path.open())}


def test_fit_and_score_with_ram_from_disk(tmp_path, tagood_home):
    ram = write_tiny_ram(tmp_path / "weights")
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 12, "train")
    fashion_folder(tmp_path / "new", {"trouser": 1, "coat": 4}, 3, offset=50)
    det, cache = tmp_path / "det", tmp_path / "c"
    r = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(det), "--methods", "tagood[epochs=2]",
                            "--backbone", "ram", "--checkpoint", str(ram.checkpoint), "--tags", str(ram.tag_list),
                            "--thresholds", str(ram.thresholds), "--cache", str(cache)], terminal_width=200)
    assert r.exit_code == 0, r.output
    meta = json.loads((det / "tagood.json").read_text())
    spec = meta["backbone"]["spec"]
    assert spec["name"] == "ram" and Path(spec["checkpoint"]).is_absolute()
    assert Path(spec["checkpoint"]) == ram.checkpoint.resolve()
    # RAM's per-tag thresholds reach the detector's tag rule (they are the tagger's, not a global default)
    from safetensors.numpy import load_file

    rule = load_file(str(det / "weights.safetensors"))["rule.thresholds"]
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
        r = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(det), "--methods", "tagood[epochs=2]",
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
    r = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(det), "--methods", KRNFT_SMALL, "--cache", str(cache)],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    meta = json.loads((det / "tagood.json").read_text())
    assert meta["dual_encoder"] == {"name": "offline"} and meta["n_train"] == 3 * 4  # the few-shot picks only
    assert json.loads((det / "config.json").read_text())["detector"] == "krnft" and (det / "weights.safetensors").exists()
    r = runner.invoke(app, ["score", str(det), str(tmp_path / "new"), "--out", str(tmp_path / "k.csv"), "--cache", str(cache)],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    got = _scores(tmp_path / "k.csv")
    assert len(got) == 6 and all(-1.0 <= v <= 0.0 for v in got.values())  # minus the IND probability mass

    # the same images scored in Python with the loaded detector and the offline encoder
    from tagood.backbones.factory import build_backbone, build_dual_encoder
    from tagood.data import FolderSource
    from tagood.detectors import load
    from tagood.extract import extract_split

    src = FolderSource(tmp_path / "new")
    reader = extract_split(src, build_backbone({}), tmp_path / "c2", split="x", fields=["features"], progress=False)
    fs = reader.to_featureset(["features"])
    build_dual_encoder(None).attach(fs, src)
    want = dict(zip(fs.paths, load(det).score(fs), strict=True))
    assert {Path(k).name + Path(k).parent.name for k in got} == {Path(k).name + Path(k).parent.name for k in want}
    for k, v in got.items():
        assert abs(v - next(w for p, w in want.items() if Path(p).parts[-2:] == Path(k).parts[-2:])) < 1e-6

    bad = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(tmp_path / "d2"), "--methods", "krnft",
                              "--backbone", "ram", "--checkpoint", str(tmp_path / "x.pth")], terminal_width=200)
    assert bad.exit_code == 2 and "need a dual encoder" in bad.output


# -- the saved decision threshold (issue 11.1) ---------------------------------------------------------
def _brute_threshold(s: np.ndarray, no_tag: np.ndarray, target: float = 0.95) -> float:
    """The smallest tagged score whose acceptance (no-tag images rejected) reaches ``target``, else the largest."""
    cands = np.unique(s[~no_tag])
    for t in cands:
        if np.mean((s <= t) & ~no_tag) >= target - 1e-12:
            return float(t)
    return float(cands[-1])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.integers(-5, 5).map(float), st.just(NO_TAG_SCORE)), min_size=1, max_size=60))
def test_decision_threshold_accepts_95_percent_and_never_the_no_tag_score(values):
    s = np.array(values)
    no_tag = s >= NO_TAG_SCORE
    if no_tag.all():
        with pytest.raises(ValueError, match="none of the"):
            decision_threshold("tagood", s, "ood")
        return
    d = decision_threshold("tagood", s, "ood")
    assert d["threshold"] == _brute_threshold(s, no_tag) and d["threshold"] < NO_TAG_SCORE
    flags = is_ood(s, d["threshold"], "ood")
    assert flags[no_tag].all()  # the method's rule: no kept tag = OOD, whatever the threshold
    assert d["heldout_tpr"] == pytest.approx(np.mean(~flags))
    assert d["degenerate"] == (d["heldout_tpr"] < 0.95 - 1e-12)
    assert d["heldout_no_tag_fraction"] == pytest.approx(no_tag.mean())
    # under the fallback rule (and for methods without tags) a score is just a score
    assert decision_threshold("tagood", s, "fallback")["threshold"] == _brute_threshold(s, np.zeros(len(s), bool))
    with pytest.raises(ValueError, match=r"tagood gave NaN scores for 1 of"):
        decision_threshold("tagood", np.append(s, np.nan), "ood")


def test_no_tag_images_are_flagged_tpr_reported_and_nan_never_in_distribution(tmp_path, tagood_home):
    """With a tag threshold that leaves many IND images without a kept tag (rule no_tag=ood), the old 95% quantile
    was the no-tag score 1e12 and `tagood score` flagged nothing; now every no-tag image is flagged, the held-out
    TPR actually reached is saved and the degenerate threshold is warned about. A detector whose centres hold NaN
    makes `tagood score` fail, naming the method and the count, instead of writing is_ood = False."""
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 20, "train")
    det, cache = tmp_path / "det", tmp_path / "c"
    method = "tagood[epochs=2,tag_threshold=0.15,no_tag=ood]"
    r = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(det), "--methods", method, "--cache", str(cache)],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    meta = json.loads((det / "tagood.json").read_text())
    assert meta["no_tag_rule"] == "ood" and meta["threshold"] < NO_TAG_SCORE
    assert meta["heldout_no_tag_fraction"] > 0.05 and meta["threshold_degenerate"]
    assert meta["heldout_tpr"] == pytest.approx(1 - meta["heldout_no_tag_fraction"])
    assert len(meta["warnings"]) == 1 and "TPR" in meta["warnings"][0]
    # how the IND vocabulary was chosen (cross-validation on IND train) is saved beside the threshold
    voc = meta["vocabulary"]
    assert voc["rule"] in ("frequent", "specific") and 1 <= voc["tags_per_class"] <= 10
    assert 0.0 <= voc["cv_no_tag_fraction"] <= 1.0

    r = runner.invoke(app, ["score", str(det), str(tmp_path / "train"), "--out", str(tmp_path / "s.csv"), "--cache", str(cache)],
                      terminal_width=200)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    no_tag = [r for r in rows if float(r["score"]) >= NO_TAG_SCORE]
    assert len(no_tag) >= 3 and all(r["is_ood"] == "True" for r in no_tag)
    assert any(r["is_ood"] == "False" for r in rows)  # tagged IND images below the threshold are accepted

    from safetensors.numpy import load_file, save_file

    w = load_file(str(det / "weights.safetensors"))
    w["centres"][0, 0] = np.nan  # a damaged detector file ...
    save_file(w, str(det / "weights.safetensors"))
    from tagood.detectors.persist import seal

    seal(det)  # ... that its manifest vouches for (an unsealed edit is refused earlier: tests/test_reliability_saved.py)
    r = runner.invoke(app, ["score", str(det), str(tmp_path / "train"), "--out", str(tmp_path / "n.csv"), "--cache", str(cache)],
                      terminal_width=200)
    n_tagged = len(rows) - len(no_tag)
    assert r.exit_code == 2 and f"NaN scores for {n_tagged} of {len(rows)} images" in r.output, r.output
    assert "centres" in r.output and method in r.output
    assert not (tmp_path / "n.csv").exists()


def test_fit_stops_on_nan_scores_naming_the_diverged_training(tmp_path, tagood_home):
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 10, "train")
    r = runner.invoke(app, ["fit", str(tmp_path / "train"), "--out", str(tmp_path / "det"),
                            "--methods", "tagood[epochs=2,lr=1e30]",
                            "--cache", str(tmp_path / "c")], terminal_width=200)
    assert r.exit_code == 2, r.output
    assert "NaN scores for 3 of 3 held-out IND images" in r.output and "diverged" in r.output
    assert not (tmp_path / "det" / "tagood.json").exists()
