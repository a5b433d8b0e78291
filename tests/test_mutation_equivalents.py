"""The reviewed equivalent mutants (``benchmarks/mutation_equivalents.toml``) still describe the code: every line an
entry says a mutation removed is a line of its module today. An edit that rewrites such a line leaves the entry
matching nothing; the mutation run would report it as stale only after a full run, this catches it at once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutation", ROOT / "benchmarks" / "mutation.py")
assert _spec is not None and _spec.loader is not None
mutation = importlib.util.module_from_spec(_spec)
sys.modules["mutation"] = mutation  # its dataclasses look their module up there
_spec.loader.exec_module(mutation)


def test_every_equivalent_matches_a_line_of_its_module() -> None:
    assert mutation.stale_in_source(mutation.EQUIVALENTS, ROOT / "src" / "tagood") == []


def test_a_rewritten_line_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "detectors").mkdir(parents=True)
    (src / "detectors" / "m.py").write_text("def f(x):\n    return x + 1\n")
    toml = tmp_path / "eq.toml"
    toml.write_text('[[equivalent]]\nmodule = "detectors/m.py"\nfunction = "x_f"\n'
                    'diff = ["-    return  x + 1", "+    return x + 2"]\nreason = "r"\n')
    assert mutation.stale_in_source(toml, src) == []  # re-indented or re-spaced: still the same line
    (src / "detectors" / "m.py").write_text("def f(x):\n    return 1 + x\n")
    assert mutation.stale_in_source(toml, src) == ["detectors/m.py:x_f: return  x + 1"]
