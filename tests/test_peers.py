"""benchmarks/peers.py: tagood's classic detectors and metrics against pytorch-ood 0.4.0 and faiss. The benchmark runs
at its ``--quick`` size when pytorch-ood is importable (timings at this size mean nothing; the test checks the
comparison is complete, the float64 reference checks pass, the ratios are what the timings say and the smallest is
printed last), and its reference check must fail on wrong scores. The library itself never imports the peers."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "peers.py"
HAVE_PEERS = importlib.util.find_spec("pytorch_ood") is not None
NEED = pytest.mark.skipif(not HAVE_PEERS, reason="pytorch-ood is not installed (optional benchmark dependency: "
                                                  "pip install --no-deps pytorch-ood==0.4.0, and faiss-cpu)")
PAIRS = {"msp", "energy", "maxlogit", "knn", "mahalanobis", "vim", "react", "ash", "metrics"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


@NEED
def test_peers_quick_compares_every_pair_and_prints_the_smallest_ratio_last() -> None:
    out = Path(tempfile.mkdtemp(prefix="peers-")) / "peers.json"
    p = run("--quick", "--repeats", "2", "--json", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    res = json.loads(out.read_text())
    rows = {r["pair"]: r for r in res["rows"]}
    want = PAIRS | ({"knn-faiss"} if importlib.util.find_spec("faiss") is not None else set())
    assert set(rows) == want
    assert res["all_checks_ok"] and all(r["ok"] for r in rows.values())
    for r in rows.values():
        assert len(r["ours_runs_s"]) == len(r["peer_runs_s"]) == 2
        assert r["ratio"] == pytest.approx(r["peer_s"] / r["ours_s"])
        if r["pair"] != "metrics":
            assert r["max_abs_err"] <= r["atol"] + r["rtol"] * 1e9  # recorded, and checked against the reference
            assert r["peer_spearman"] > 0.99  # the peer ranks the samples as we do
    smallest = min(rows.values(), key=lambda r: r["ratio"])
    assert res["smallest"] == {"pair": smallest["pair"], "ratio": smallest["ratio"]}
    m = re.fullmatch(r"smallest_ratio: ([0-9.]+)x \((\S+)\)", lines[-1])
    assert m and m.group(2) == smallest["pair"] and float(m.group(1)) == pytest.approx(smallest["ratio"], abs=0.006)
    assert res["shapes"]["n_train"] == 2000 and res["machine"]["pytorch_ood"] == "0.4.0"
    assert "peers.py --quick" in res["command"]
    # the stand-in torchvision lived in that process only
    assert importlib.util.find_spec("torchvision") is None or "standin" not in str(importlib.util.find_spec("torchvision"))


@NEED
def test_peers_reference_check_fails_on_wrong_scores() -> None:
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import peers; ref = peers.reference\n"
            "peers.reference = lambda name, d, k: ref(name, d, k) * (1 + 1e-4)\n"
            "sys.exit(peers.main(['--quick', '--only', 'energy,maxlogit', '--repeats', '1']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "CHECK FAILED for: energy, maxlogit" in p.stdout
    assert "smallest_ratio" not in p.stdout


def test_library_never_imports_the_peers() -> None:
    src = ROOT / "src" / "tagood"
    pat = re.compile(r"^\s*(import|from)\s+(pytorch_ood|faiss|torchvision)\b", re.M)
    hits = [str(f.relative_to(ROOT)) for f in src.rglob("*.py") if pat.search(f.read_text())]
    assert hits == []
