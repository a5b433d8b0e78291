"""benchmarks/extract_throughput.py runs (--quick) and prints the pipeline / decode-alone ratio last."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("decode", ["processes", "threads"])
def test_quick_run_prints_the_ratio_last(tmp_path, decode):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TAGOOD_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "extract_throughput.py"), "--quick", "--workers", "2",
                          "--decode", decode], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert f"decode + preprocess alone ({decode:9s})" in out.stdout and f"full pipeline             ({decode:9s})" in out.stdout
    assert "2 decode workers" in lines[0] and "64 (half JPEG" in lines[0]
    m = re.fullmatch(r"pipeline_vs_decode_alone: (\d+\.\d\d)", lines[-1])
    assert m and float(m.group(1)) > 0
    rates = [float(x) for x in re.findall(r"(\d+\.\d) images/s", out.stdout)]
    assert len(rates) == 2 and all(r > 0 for r in rates)
