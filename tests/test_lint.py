"""The tree is lint-clean and type-checks: ``ruff`` (lint and import order) and ``mypy`` as configured in
``pyproject.toml`` (``[tool.ruff]``, ``[tool.mypy]``), run with the test environment's own executables.

To reproduce a failure, run from the repository root::

    .venv/bin/python -m ruff check src tests benchmarks scripts
    .venv/bin/python -m mypy src

``ruff check --fix`` repairs import order and most pyupgrade findings; it never reformats (no ``ruff format``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <args>`` in the repository root (where pyproject.toml sets the configuration)."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)


def _report(what: str, proc: subprocess.CompletedProcess[str]) -> str:
    out = (proc.stdout + proc.stderr).strip()
    if "No module named" in out and proc.returncode != 0:
        return f"{what}: not installed in {sys.executable}; install the test extra: pip install -e '.[test]'\n{out}"
    return f"{what} failed (exit {proc.returncode}); run it from {ROOT} to see the same:\n{out}"


def test_ruff_clean() -> None:
    proc = _run("ruff", "check", "--no-fix", "--output-format", "concise", "src", "tests", "benchmarks", "scripts",
                timeout=300)
    assert proc.returncode == 0, _report("ruff check src tests benchmarks scripts", proc)


def test_mypy_clean() -> None:
    # A cold run (no .mypy_cache) reads torch's and numpy's stubs: about 2 minutes on 2 CPU cores; 15 s when warm.
    proc = _run("mypy", "src", timeout=540)
    assert proc.returncode == 0, _report("mypy src", proc)
