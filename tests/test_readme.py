"""The README's Python quick start runs as written: on numpy features, and on small real image folders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from image_folders import fashion_folder

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(heading: str) -> str:
    """The first ```python block after the paragraph that starts with ``heading``."""
    text = README.read_text(encoding="utf-8")
    at = text.index(heading)
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, at)
    assert m is not None, f"no python block after {heading!r}"
    return m.group(1)


def _auroc_lines(out: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+) \{'auroc': ([0-9.e-]+)", out, re.M)}


def test_quick_start_on_numpy_features(capsys: pytest.CaptureFixture[str]) -> None:
    code = _block("**Python, on features you already have**")
    exec(compile(code, str(README), "exec"), {})
    aurocs = _auroc_lines(capsys.readouterr().out)
    assert set(aurocs) == {"energy", "knn[k=10]", "mahalanobis", "vim[dim=32]"}
    # the stand-in OOD data lies off the IND class clusters: every method separates it
    assert all(a > 0.9 for a in aurocs.values()), aurocs


def test_quick_start_on_image_folders(tmp_path: Path, tagood_home: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = _block("**Python, on image folders**")
    classes = {"trouser": 1, "bag": 8, "sandal": 5}
    fashion_folder(tmp_path / "data" / "train", classes, 20, "train")
    fashion_folder(tmp_path / "data" / "val", classes, 5)
    fashion_folder(tmp_path / "data" / "ood", {"sneaker": 7, "coat": 4}, 5)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TAGOOD_CACHE", str(tmp_path / "cache"))
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    m = re.search(r"\{'auroc': ([0-9.e-]+), 'fpr95': ([0-9.e-]+)", out)
    assert m is not None, out
    assert 0.0 <= float(m.group(1)) <= 1.0 and 0.0 <= float(m.group(2)) <= 1.0
    assert (tmp_path / "cache").is_dir() and any((tmp_path / "cache").iterdir()), "features were not cached"
