"""scripts/plot_scaling.py: the scale rehearsal's result file drawn as time and peak RSS against N."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PRELIMINARY = ROOT / "docs" / "results" / "scale" / "rehearsal-preliminary.json"


def _script() -> ModuleType:
    mod = sys.modules.get("plot_scaling")
    if mod is None:
        spec = importlib.util.spec_from_file_location("plot_scaling", ROOT / "scripts" / "plot_scaling.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules["plot_scaling"] = mod
        spec.loader.exec_module(mod)
    return mod


ps = _script()


def test_plot_of_the_preliminary_file(tmp_path: Path) -> None:
    """A PNG of plausible size, the same bytes when drawn twice, recording the digest of the file it was drawn from;
    one line per stage, at the file's N."""
    out = ps.plot(PRELIMINARY, tmp_path / "sub" / "scaling.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(data) < 400_000, len(data)
    with Image.open(out) as im:
        assert im.size == (1200, 500)
        colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 50  # lines, not a blank canvas
    text = ps.png_text(out)
    assert text[ps.DIGEST_KEY] == ps.source_digest(PRELIMINARY) and "Software" not in text
    assert ps.plot(PRELIMINARY, tmp_path / "again.png").read_bytes() == data
    doc = ps.load_rehearsal(PRELIMINARY)
    times = ps.series(doc, "wall_s")
    assert list(times) == [s["stage"] for s in doc["runs"][0]["stages"]]
    assert [n for n, _ in times["head"]] == sorted(float(r["sizes"]["train"]) for r in doc["runs"])


@pytest.mark.parametrize("content, message", [
    ("not json {", "not a JSON file"),
    ("[1, 2]", "the top level is not an object"),
    ('{"runs": []}', "no 'runs' list"),
    ('{"runs": [{"scale": 0.1, "sizes": {"train": 10}}]}', r"runs\[0\] has no 'stages'"),
    ('{"runs": [{"scale": 0.1, "sizes": {"train": 10}, "stages": [{"stage": "head", "wall_s": "fast"}]}]}',
     r"runs\[0\]\.stages\[0\]\['wall_s'\] is 'fast'"),
])
def test_malformed_file_is_refused_by_name(tmp_path: Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(ps.RehearsalFileError, match=message) as e:
        ps.plot(bad, tmp_path / "x.png")
    assert str(bad) in str(e.value)
    assert not (tmp_path / "x.png").exists()


def test_command_line(tmp_path: Path) -> None:
    """Exit 0 writing the PNG; exit 2 with one line naming the file when it is not a rehearsal's result file."""
    out = tmp_path / "s.png"
    ok = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_scaling.py"), str(PRELIMINARY), "--out", str(out)],
                        capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0 and out.is_file(), ok.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"runs": "none"}), encoding="utf-8")
    fail = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_scaling.py"), str(bad), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert fail.returncode == 2 and fail.stderr.count("\n") == 1 and str(bad) in fail.stderr, fail.stderr


def test_committed_plot_is_drawn_from_the_committed_file() -> None:
    """docs/results/scale/scaling.png records the digest of the result file the scaling guide's block names."""
    guide = (ROOT / "docs" / "guides" / "scaling.md").read_text(encoding="utf-8")
    line = next(ln for ln in guide.splitlines() if ln.startswith("<!-- scaling: "))
    words = dict(w.split("=", 1) for w in line[len("<!-- scaling: "):-len(" -->")].split()[1:])
    source = ROOT / line[len("<!-- scaling: "):].split()[0]
    assert ps.png_text(ROOT / words["plot"])[ps.DIGEST_KEY] == ps.source_digest(source)
