"""Mutation-testing gate on the numeric core: mutmut 3.8 on each listed module, each mutant run against the tests
that reach it; prints the score per module and the surviving mutants.

Usage::

    pip install mutmut==3.8.1                       # or: pip install -e '.[mutation]'
    python benchmarks/mutation.py                   # every module of MODULES
    python benchmarks/mutation.py energy intervals  # some of them (a key of MODULES or a module path)
    python benchmarks/mutation.py --json docs/results/mutation.json            # the table of docs/guides/testing.md
    python benchmarks/mutation.py metrics --json docs/results/mutation.json --update   # re-run one module's row

How a mutant is judged: the modules of :data:`MODULES` that share their tests get one fresh copy of ``src/``,
``tests/`` and ``pyproject.toml`` in a temporary folder (nothing is written into the checkout), with a
``[tool.mutmut]`` section that mutates those modules only and selects the test files mapped to them. mutmut
first runs those tests once on the un-mutated code with every function of the modules instrumented, to record
which tests call which function; each mutant then runs (in a forked process) only the tests that called its
function, ``-x``: the first failure kills it. A mutant whose function no selected test calls is counted as "no
tests" (a survivor).

Score: killed (a test failed, the run timed out or crashed) over all mutants less the reviewed equivalents --
mutants that cannot change any result -- listed with a reason in ``benchmarks/mutation_equivalents.toml``. An
equivalent is matched by its function and the lines the mutation changed (not by mutmut's number, which moves
when the function is edited); an entry that no longer matches a survivor is reported as stale. One reviewed rule
of that file covers a whole kind: mutants that only reword a message (:func:`is_message_mutant`). Survivors are
printed as entries of that file, for the reviewer to paste with a reason or to kill with a test.

Exit status: 0 when every module reaches ``--min-score`` (default 90), 1 otherwise, 2 for a bad argument or a
missing mutmut; a failure of mutmut itself (e.g. the un-mutated tests fail) stops the script with its output.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tokenize
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = Path(__file__).resolve().parent / "mutation_equivalents.toml"

_CLASSIC_TESTS = ["tests/test_known_answers_classic.py", "tests/test_known_answers_extra.py",
                  "tests/test_known_answers_mutants.py",
                  "tests/test_detectors.py", "tests/test_float32_paths.py"]

#: module (path under ``src/tagood``) -> the test files (or node ids) whose tests may kill its mutants; mutmut then
#: runs, for each mutant, only those of them that call the mutated function. Keys of the short names are the file
#: stems (``energy``, ``decompose``, ...).
MODULES: dict[str, list[str]] = {
    "metrics.py": ["tests/test_metrics.py"],
    "detectors/energy.py": _CLASSIC_TESTS,
    "detectors/msp.py": _CLASSIC_TESTS,
    "detectors/maxlogit.py": _CLASSIC_TESTS,
    "detectors/knn.py": _CLASSIC_TESTS,
    "detectors/mahalanobis.py": _CLASSIC_TESTS,
    "detectors/vim.py": _CLASSIC_TESTS,
    "detectors/ash.py": _CLASSIC_TESTS,
    "detectors/react.py": _CLASSIC_TESTS,
    "detectors/lhact.py": _CLASSIC_TESTS,
    "detectors/featurenorm.py": _CLASSIC_TESTS,
    "detectors/odin.py": _CLASSIC_TESTS,
    "detectors/tagood/decompose.py": ["tests/test_decompose_known.py", "tests/test_ladder.py",
                                      "tests/test_tagood.py::test_decomposition_by_hand",
                                      "tests/test_tagood.py::test_tag_rule_threshold_topk_and_vocab"],
    # the coverage test (45 000 bootstrap replicates) is left out: minutes per mutant; its claim, the interval's
    # ends, is pinned by the known-distribution tests
    "bench/intervals.py": ["tests/test_intervals.py", "tests/test_compare.py", "--deselect",
                           "tests/test_intervals.py::test_covers_the_true_auroc_about_as_often_as_promised"],
}

#: mutmut's exit codes of a test run, as judged here (its own table: ``mutmut.stats.status_by_exit_code``)
KILLED = {"killed", "timeout", "segfault", "suspicious"}


@dataclass
class Mutant:
    """One mutant: mutmut's name, its status and the lines it changed (``-old`` / ``+new``)."""

    name: str
    status: str
    diff: list[str] = field(default_factory=list)
    full_diff: str = ""

    @property
    def function(self) -> str:
        """mutmut's name of the mutated function (the mutant's name without its number)."""
        return self.name.rsplit("__mutmut_", 1)[0]


@dataclass
class ModuleResult:
    """The mutants of one module and how many of them the reviewed file lists as equivalent."""

    module: str
    mutants: list[Mutant]
    equivalent: list[Mutant]

    @property
    def killed(self) -> int:
        return sum(m.status in KILLED for m in self.mutants)

    @property
    def counted(self) -> int:
        return len(self.mutants) - len(self.equivalent)

    @property
    def score(self) -> float:
        return 100.0 * self.killed / self.counted if self.counted else 100.0

    @property
    def survivors(self) -> list[Mutant]:
        eq = {m.name for m in self.equivalent}
        return [m for m in self.mutants if m.status not in KILLED and m.name not in eq]


def _changed(diff: str) -> list[str]:
    return [ln.rstrip() for ln in diff.splitlines()
            if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]


def _norm(code: str) -> str:
    """A line of code with its whitespace collapsed: a re-indented or re-spaced line still matches."""
    return " ".join(code.split())


def _key(module: str, function: str, changed: list[str]) -> tuple[str, str, tuple[str, ...]]:
    return module, function.rpartition(".")[2], tuple(ln[0] + _norm(ln[1:]) for ln in changed)


def stale_in_source(path: Path, src: Path) -> list[str]:
    """Entries of the equivalents file ``path`` whose removed lines are not all lines of their module under ``src``
    today (an edit rewrote them, so the entry can match no mutant): ``"module:function: the first missing line"``.
    A mutation run reports such entries only at its end; this needs no run."""
    out = []
    for e in tomllib.loads(path.read_text())["equivalent"]:
        module = src / e["module"]
        lines = {_norm(ln) for ln in module.read_text().splitlines()} if module.exists() else set()
        missing = [ln[1:] for ln in e["diff"] if ln.startswith("-") and _norm(ln[1:]) not in lines]
        if missing or not module.exists():
            out.append(f"{e['module']}:{e['function']}: {missing[0].strip() if missing else 'no such module'}")
    return out


def load_equivalents(path: Path) -> dict[tuple[str, str, tuple[str, ...]], str]:
    """The reviewed equivalent mutants: ``(module, function, changed lines) -> reason``."""
    if not path.exists():
        return {}
    out: dict[tuple[str, str, tuple[str, ...]], str] = {}
    for e in tomllib.loads(path.read_text())["equivalent"]:
        if not e.get("reason", "").strip():
            raise SystemExit(f"{path}: the equivalent {e.get('function')} in {e.get('module')} gives no reason")
        out[_key(e["module"], e["function"], e["diff"])] = e["reason"]
    return out


def load_rules(path: Path) -> dict[str, str]:
    """The reviewed rules of the equivalents file (``[[rule]]``: ``name`` -> ``reason``); the one known rule is
    ``message``: see :func:`is_message_mutant`."""
    if not path.exists():
        return {}
    rules = {r["name"]: r["reason"] for r in tomllib.loads(path.read_text()).get("rule", [])}
    unknown = set(rules) - {"message"}
    if unknown:
        raise SystemExit(f"{path}: unknown rule(s) {sorted(unknown)}; the known one is 'message'")
    return rules


_LOG_CALLS = ("log.", "logger.", "logging.", "warnings.warn(")


def _code_tokens(text: str) -> list[str]:
    """The tokens of ``text`` other than string literals, ``None``, comments and line breaks (an unfinished
    statement is tokenized as far as it goes)."""
    out: list[str] = []
    try:
        for t in tokenize.generate_tokens(io.StringIO(text).readline):
            if t.type in (tokenize.STRING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                          tokenize.DEDENT, tokenize.ENDMARKER) or t.string == "None":
                continue
            out.append(t.string)
    except (tokenize.TokenError, IndentationError):
        pass
    return out


def is_message_mutant(diff: str) -> bool:
    """Whether a mutant only changes what a user reads, not a result: string literals alone (or ``None`` in their
    place) in a ``raise`` statement, or anything in the arguments of a logging call or a warning."""
    lines = [ln for ln in diff.splitlines() if not ln.startswith(("---", "+++", "@@"))]
    changed = [i for i, ln in enumerate(lines) if ln[:1] in "+-"]
    if not changed:
        return False
    minus = "\n".join(ln[1:] for ln in lines if ln[:1] == "-")
    plus = "\n".join(ln[1:] for ln in lines if ln[:1] == "+")
    strings_only = _code_tokens(minus) == _code_tokens(plus)
    # the statement the first changed line belongs to: walk back over lines that hold strings only
    for ln in reversed(lines[: changed[0] + 1]):
        if ln[:1] == "+":
            continue
        code = ln[1:].strip()
        if code.startswith(_LOG_CALLS):
            return True
        if code.startswith("raise "):
            return strings_only
        if not set(_code_tokens(code)) <= {")", ",", "+", "%"}:
            return False
    return False


def _workdir(modules: list[str], tests: list[str], isolation: str) -> Path:
    """A scratch copy of the project set up for mutmut to mutate ``modules`` only."""
    work = Path(tempfile.mkdtemp(prefix="tagood-mutation-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(ROOT / "src", work / "src", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    selection = [t for t in tests if t.startswith("-") or (ROOT / t.split("::")[0]).exists()]
    cfg = {
        "source_paths": ["src"],
        "only_mutate": [f"src/tagood/{m}" for m in modules],
        "pytest_add_cli_args_test_selection": selection,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "no:xdist", "-W", "ignore::DeprecationWarning"],
        "use_git_change_detection": False,
        "track_dependencies": False,
        "process_isolation": isolation,
    }
    text = (ROOT / "pyproject.toml").read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml has a [tool.mutmut] section: this script writes its own into the copy")
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in cfg.items()]
    (work / "pyproject.toml").write_text(text + "\n".join(lines) + "\n")
    return work


def _mutmut(work: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=work, env=env, text=True,
                          capture_output=True, check=False)


_DIFFS = r"""
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
names, path = json.loads(sys.argv[1]), sys.argv[2]
print(json.dumps({n: get_diff_for_mutant(n, path=path) for n in names}))
"""


def run_group(modules: list[str], tests: list[str], equivalents: dict[tuple[str, str, tuple[str, ...]], str],
              rules: dict[str, str], children: int, isolation: str, keep: bool, logs: Path) -> list[ModuleResult]:
    """Run mutmut once on modules that share their tests (one recording of which test calls which function);
    returns each module's mutants with their statuses and the diffs of those not killed."""
    from mutmut.stats import status_by_exit_code

    work = _workdir(modules, tests, isolation)
    try:
        res = _mutmut(work, ["run", "--max-children", str(children)])
        (logs / f"{modules[0].replace('/', '_')}.log").write_text(res.stdout + res.stderr)
        out: list[ModuleResult] = []
        for module in modules:
            meta = work / "mutants" / "src" / "tagood" / f"{module}.meta"
            if not meta.exists():
                raise SystemExit(f"mutmut failed on {module} (exit {res.returncode}); its output is in {logs}:\n"
                                 + (res.stdout + res.stderr)[-3000:])
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            mutants = [Mutant(n, status_by_exit_code[c]) for n, c in codes.items()]
            open_ = [m for m in mutants if m.status not in KILLED]
            if open_:
                got = subprocess.run([sys.executable, "-c", _DIFFS, json.dumps([m.name for m in open_]),
                                      f"src/tagood/{module}"], cwd=work, text=True, capture_output=True, check=True)
                diffs = json.loads(got.stdout)
                for m in open_:
                    m.diff, m.full_diff = _changed(diffs[m.name]), diffs[m.name]
            equivalent = [m for m in open_ if _key(module, m.function, m.diff) in equivalents
                          or (rules.get("message") and is_message_mutant(m.full_diff))]
            out.append(ModuleResult(module, mutants, equivalent))
        return out
    finally:
        if keep:
            print(f"  kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _toml_entry(module: str, m: Mutant) -> str:
    diff = ",\n    ".join(json.dumps(ln) for ln in m.diff)
    return (f'[[equivalent]]\nmodule = "{module}"\nfunction = "{m.function.rpartition(".")[2]}"\n'
            f"diff = [\n    {diff},\n]\nreason = \"\"  # {m.name}: {m.status}\n")


def write_json(path: Path, results: list[ModuleResult], a: argparse.Namespace, seconds: float, update: bool,
               argv: list[str]) -> None:
    """The score table and the survivors as JSON (rendered into docs/guides/testing.md); ``update``: merged into
    the rows of an earlier file (rows of the modules run now replace theirs)."""
    import mutmut

    run = {"command": "python benchmarks/mutation.py " + " ".join(argv), "date": time.strftime("%Y-%m-%d", time.gmtime()),
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True, capture_output=True,
                                    check=False).stdout.strip(),
           "minutes": round(seconds / 60, 1), "max_children": a.max_children, "modules": [r.module for r in results]}
    doc: dict[str, Any] = {"tool": f"mutmut {mutmut.__version__}", "min_score": a.min_score, "runs": [], "rows": [],
                           "survivors": []}
    if update and path.exists():
        old = json.loads(path.read_text())
        now = set(run["modules"])
        doc["rows"] = [r for r in old["rows"] if r["module"] not in now]
        doc["survivors"] = [m for m in old["survivors"] if m["module"] not in now]
        kept = {r["module"] for r in doc["rows"]}
        doc["runs"] = [r for r in old["runs"] if kept & set(r["modules"])]
    doc["runs"].append(run)
    doc["rows"] += [{"module": r.module, "mutants": len(r.mutants), "equivalent": len(r.equivalent),
                     "killed": r.killed, "survived": len(r.survivors), "score": round(r.score, 1)} for r in results]
    doc["survivors"] += [{"module": r.module, "mutant": m.name, "status": m.status, "diff": m.diff}
                         for r in results for m in r.survivors]
    order = {m: i for i, m in enumerate(MODULES)}
    doc["rows"].sort(key=lambda r: order.get(r["module"], len(order)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the gate; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help="modules to run (a key of MODULES or its stem); default: all")
    ap.add_argument("--max-children", type=int, default=2, help="mutants run at once (default 2)")
    ap.add_argument("--isolation", choices=["fork", "forkserver"], default="forkserver",
                    help="mutmut's process_isolation (forkserver: torch is not imported by the parent)")
    ap.add_argument("--equivalents", type=Path, default=EQUIVALENTS, help="the reviewed equivalent mutants")
    ap.add_argument("--json", type=Path, help="write the table and the survivors to this JSON file")
    ap.add_argument("--update", action="store_true",
                    help="with --json: keep the rows of the modules not run now (their run stays listed)")
    ap.add_argument("--min-score", type=float, default=90.0, help="the gate: lowest score per module (percent)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copies (for `mutmut show`/`browse`)")
    a = ap.parse_args(argv)
    try:
        import mutmut
    except ImportError:
        print("mutmut is not installed: pip install mutmut==3.8.1", file=sys.stderr)
        return 2
    if not mutmut.__version__.startswith("3."):
        print(f"mutmut {mutmut.__version__}: this script needs mutmut 3 (pip install mutmut==3.8.1)", file=sys.stderr)
        return 2
    stems = {Path(k).stem: k for k in MODULES}
    chosen = [stems.get(m, m) for m in a.modules] or list(MODULES)
    bad = [m for m in chosen if m not in MODULES]
    if bad:
        print(f"unknown module(s) {bad}; choose among {sorted(stems)}", file=sys.stderr)
        return 2
    equivalents = load_equivalents(a.equivalents)
    rules = load_rules(a.equivalents)
    logs = Path(tempfile.mkdtemp(prefix="tagood-mutation-logs-"))
    results: list[ModuleResult] = []
    t0 = time.monotonic()
    groups: dict[tuple[str, ...], list[str]] = {}
    for module in chosen:  # modules with the same tests share one mutmut run
        groups.setdefault(tuple(MODULES[module]), []).append(module)
    for tests, modules in groups.items():
        print(f"mutating {', '.join(modules)} against {' '.join(tests)} ...", flush=True)
        for r in run_group(modules, list(tests), equivalents, rules, a.max_children, a.isolation, a.keep, logs):
            results.append(r)
            print(f"  {r.module}: {len(r.mutants)} mutants, {r.killed} killed, {len(r.equivalent)} equivalent: "
                  f"{r.score:.1f}%", flush=True)
    total = time.monotonic() - t0

    used = {_key(r.module, m.function, m.diff) for r in results for m in r.equivalent}
    stale = [k for k in equivalents if k[0] in chosen and k not in used]
    print("\nsurvivors (not listed as equivalent), as entries of the equivalents file for the reviewer:")
    for r in results:
        for m in r.survivors:
            print("\n" + _toml_entry(r.module, m), end="")
    if stale:
        print("\nstale entries of the equivalents file (no surviving mutant matches them any more):")
        for mod, fn, diff in stale:
            print(f"  {mod} {fn}: {' | '.join(diff)}")
    print("\n| module | mutants | equivalent | killed | survived | score |\n|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.module} | {len(r.mutants)} | {len(r.equivalent)} | {r.killed} | {len(r.survivors)} "
              f"| {r.score:.1f}% |")
    print(f"\n{len(results)} modules in {total / 60:.1f} min (mutmut logs in {logs})")
    if a.json:
        write_json(a.json, results, a, total, update=a.update, argv=argv if argv is not None else sys.argv[1:])
    ok = all(r.score >= a.min_score for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
