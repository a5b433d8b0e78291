"""``benchmarks/scale_rehearsal.py`` at a tiny scale (two `tagood bench` processes, ~20 s): every stage reports, the
result file holds its figures, and two scales a factor 10 apart give the cost ratios."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale_rehearsal.py"


def _load():
    spec = importlib.util.spec_from_file_location("scale_rehearsal", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["scale_rehearsal"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_counts_follow_imagenet_and_the_ratio_pairs_scales():
    mod = _load()
    assert mod.counts(1) == {"train": 1_281_167, "test": 50_000, "ood": 10_000}
    assert mod.counts(0.01) == {"train": 12_812, "test": 500, "ood": 100}
    assert mod.num_classes(1_281_167) == 1000 and mod.num_classes(641) == 32
    runs = [{"scale": s, "stages": [{"stage": "knn", "wall_s": w, "peak_anon_mb": 100.0, "peak_rss_mb": 0.0,
                                     "disk_bytes": d}]}
            for s, w, d in ((0.01, 2.0, 10), (0.1, 21.0, 100), (0.5, 1.0, 1))]
    (r,) = mod.ratios(runs)  # 0.5 has no partner a factor 10 below it
    assert (r["scale"], r["vs_scale"], r["time_ratio"], r["anon_rss_ratio"], r["disk_ratio"]) == (0.1, 0.01, 10.5, 1.0, 10.0)
    assert r["rss_ratio"] is None  # no peak RSS in these records


def test_rehearsal_runs_every_stage_and_writes_its_result_file(tmp_path, capsys):
    mod = _load()
    out = tmp_path / "r.json"
    result = mod.main(["--scale", "0.0002", "--width", "16", "--methods", "msp,tagood", "--work", str(tmp_path / "w"),
                       "--json", str(out)])
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["stream_above_gb"] == 0.0
    assert "stream_above_gb = 0.0" in (tmp_path / "w" / "scale-0.0002" / "bench.toml").read_text()
    assert saved["width"] == 16 and saved["tokens"] == 145 and saved["tags"] == 4585 and saved["preliminary"] is True
    (run,) = saved["runs"]
    assert run["sizes"] == {"train": 256, "test": 10, "ood0": 2, "ood1": 2, "ood2": 2, "ood3": 2}
    names = [s["stage"] for s in run["stages"]]
    assert names == ["extract:train", "extract:test", "extract:ood0", "extract:ood1", "extract:ood2", "extract:ood3",
                     "head", "featurenorm", "tagscore", "msp", "tagood"]
    for s in run["stages"]:
        assert s["wall_s"] > 0 and s["throughput_per_s"] > 0, s
        assert s["peak_rss_mb"] > 50 and 0 < s["peak_anon_mb"] <= s["peak_rss_mb"], s
        assert s["disk_bytes"] > 0 and s["disk_files"] > 0 and s["process_extract_s"] >= 0, s
        assert s["stage"] in printed
    # the cache holds every field after the first process: the later stages only add their outputs
    ext = next(s for s in run["stages"] if s["stage"] == "extract:train")
    assert ext["disk_bytes"] >= 256 * 145 * 16 * 2
    assert "at most 1 steps" in next(s for s in run["stages"] if s["stage"] == "tagood")["note"]
    assert len(run["processes"]) == 3 and all(p["timings"]["total_s"] > 0 for p in run["processes"])
    # MSP needs only features: it reads the first process's entries (a superset of its fields), one per split (and
    # FeatureNorm's pseudo-OOD split): no stage adds an entry
    assert {s["cache_entries"] for s in run["stages"]} == {7}
    assert not (tmp_path / "w" / "scale-0.0002" / "cache").exists()  # deleted once measured (--keep-cache keeps it)
    assert saved["ratios"] == []  # one scale: no ratio


def test_one_process_rehearsal_reports_each_stages_own_peak(tmp_path):
    """``--one-process``: one `tagood bench` (the head fitted once); each stage's peak RSS is the bench's own
    per-stage figure (the process's high-water mark reset before each stage), so stages differ and none exceeds the
    process's peak."""
    mod = _load()
    result = mod.main(["--scale", "0.0002", "--width", "16", "--methods", "msp,knn", "--work", str(tmp_path / "w"),
                       "--one-process", "--quiet-machine"])
    assert result["one_process"] is True and result["preliminary"] is False
    (run,) = result["runs"]
    (proc,) = run["processes"]
    assert proc["methods"] == ["featurenorm", "tagscore", "msp", "knn"]
    stage_peaks = proc["peak_rss_stage_mb"]
    assert set(stage_peaks) == {"extract", "head", "featurenorm", "tagscore", "msp", "knn"}
    names = [s["stage"] for s in run["stages"]]
    assert names[-5:] == ["head", "featurenorm", "tagscore", "msp", "knn"]
    for s in run["stages"]:
        key = "extract" if s["stage"].startswith("extract:") else s["stage"]
        assert s["peak_rss_mb"] == stage_peaks[key] and 50 < s["peak_rss_mb"] <= proc["peak_rss_mb"] + 1, s
        assert s["peak_anon_mb"] is None and s["wall_s"] > 0, s
        # the bench's per-stage storage reads (page-cache hits excluded) go with each stage
        assert s["storage_read_mb"] == proc["storage_read_stage_mb"][key] >= 0, s
    assert set(proc["storage_read_stage_mb"]) == set(stage_peaks)
