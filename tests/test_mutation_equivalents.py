"""The reviewed equivalent mutants (``benchmarks/mutation_equivalents.toml``) still describe the code: every line an
entry says a mutation removed is a line of its module today. An edit that rewrites such a line leaves the entry
matching nothing; the mutation run would report it as stale only after a full run, this catches it at once."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "benchmarks" / "mutation_equivalents.toml"


def _norm(line: str) -> str:
    return " ".join(line.split())  # whitespace-insensitive, as benchmarks/mutation.py matches entries


def stale_entries(path: Path, src: Path) -> list[str]:
    """Entries of ``path`` whose removed lines are not all lines of their module under ``src``."""
    out = []
    for e in tomllib.loads(path.read_text())["equivalent"]:
        module = src / e["module"]
        lines = {_norm(ln) for ln in module.read_text().splitlines()} if module.exists() else set()
        missing = [ln[1:] for ln in e["diff"] if ln.startswith("-") and _norm(ln[1:]) not in lines]
        if missing or not module.exists():
            out.append(f"{e['module']}:{e['function']}: {missing[0].strip() if missing else 'no such module'}")
    return out


def test_every_equivalent_matches_a_line_of_its_module() -> None:
    assert stale_entries(EQUIVALENTS, ROOT / "src" / "tagood") == []


def test_a_rewritten_line_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "detectors").mkdir(parents=True)
    (src / "detectors" / "m.py").write_text("def f(x):\n    return x + 1\n")
    toml = tmp_path / "eq.toml"
    toml.write_text('[[equivalent]]\nmodule = "detectors/m.py"\nfunction = "x_f"\n'
                    'diff = ["-    return  x + 1", "+    return x + 2"]\nreason = "r"\n')
    assert stale_entries(toml, src) == []  # re-indented or re-spaced: still the same line
    (src / "detectors" / "m.py").write_text("def f(x):\n    return 1 + x\n")
    assert stale_entries(toml, src) == ["detectors/m.py:x_f: return  x + 1"]
