"""The README's library example runs as written (on real image folders in place of data/...)."""

from __future__ import annotations

import re
from pathlib import Path

from image_folders import fashion_folder

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs(tmp_path, tagood_home, monkeypatch, capsys) -> None:
    text = README.read_text()
    section = text[text.index("## Library") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    fashion_folder(tmp_path / "data" / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 20, "train")
    fashion_folder(tmp_path / "data" / "val", {"trouser": 1, "bag": 8, "sandal": 5}, 5)
    fashion_folder(tmp_path / "data" / "ood", {"sneaker": 7, "coat": 4}, 5)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TAGOOD_CACHE", str(tmp_path / "cache"))
    code = code.replace('detectors.create("tagood[tau=0.5]")', 'detectors.create("tagood[tau=0.5,epochs=2]")')  # CI time
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "'auroc':" in out and "'fpr95':" in out
