"""Every code block of README.md, CONTRIBUTING.md and docs/**/*.md runs, or says why not; the doctests of
``src/tagood`` run.

Code blocks (fenced, with a language):

* ``python``: the blocks of one file run in order in one namespace (a module of its own), in a temporary folder
  (one per test process, shared by the files) holding small real image folders (``data/train/<class>/``,
  ``data/val/<class>/``: Fashion-MNIST trouser, bag, sandal; ``data/ood/<class>/``: sneaker, coat), with
  ``TAGOOD_HOME`` / ``TAGOOD_CACHE`` pointing into temporary folders;
* ``bash`` / ``sh`` / ``shell``: each block runs with ``bash -euo pipefail`` in that folder, the test
  environment's ``bin`` first on ``PATH`` (so ``tagood`` is this checkout's);
* ``toml`` / ``json``: parsed; a TOML benchmark config (it has ``[train]`` or ``benchmark``) is validated against
  the config schema;
* ``text``, ``tsv``, ``csv``, ``yaml``, ``ini``: not checked.

A block that cannot run here carries an HTML comment on the line right before its opening fence::

    <!-- not run: needs a GPU and the RAM weights -->
    <!-- run: slow -->

``not run`` needs a reason; ``run: slow`` runs the block only in the slow variant of the file's test
(``-m slow``). A block without a language, a marker without a reason or a marker not followed by a block fails
the file's format test; every other block is run, so a block that is neither run nor marked cannot exist.
"""

from __future__ import annotations

import doctest
import importlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import types
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_folders import fashion_folder

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tagood"

RUN_LANGS = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
PARSE_LANGS = {"toml", "json"}
TEXT_LANGS = {"text", "tsv", "csv", "yaml", "ini"}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not run|run)\s*:\s*(?P<arg>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    mode: str  # "run", "slow" or "skip"
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{_rel(self.path)}:{self.line}"


def _rel(p: Path) -> Path:
    return p.relative_to(ROOT) if p.is_relative_to(ROOT) else p


def markdown_files() -> list[Path]:
    """README.md, CONTRIBUTING.md and every page under docs/."""
    files = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def parse_blocks(path: Path, text: str | None = None) -> tuple[list[CodeBlock], list[str]]:
    """The fenced blocks of a Markdown file and the format problems found (no language, a bad or dangling marker)."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[CodeBlock] = []
    problems: list[str] = []
    rel = _rel(path)
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if MARKER.match(lines[i]) and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
                problems.append(f"{rel}:{i + 1}: a run marker must be on the line right before a code block's opening fence")
            i += 1
            continue
        indent, fence, lang = m["indent"], m["fence"], m["info"].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1  # the closing fence
        mode, reason = "run", ""
        prev = MARKER.match(lines[start - 1]) if start > 0 else None
        if prev:
            if prev["kind"] == "not run":
                mode, reason = "skip", prev["arg"]
                if not reason:
                    problems.append(f"{rel}:{start}: '<!-- not run: ... -->' needs a reason after the colon")
            elif prev["arg"] == "slow":
                mode = "slow"
            else:
                problems.append(f"{rel}:{start}: unknown marker '{lines[start - 1].strip()}': use "
                                f"'<!-- not run: REASON -->' or '<!-- run: slow -->'")
        if not lang:
            problems.append(f"{rel}:{start + 1}: a code block without a language: write ```python, ```bash, "
                            f"```toml, ```json or ```text")
        elif lang not in RUN_LANGS and lang not in PARSE_LANGS and lang not in TEXT_LANGS:
            problems.append(f"{rel}:{start + 1}: code block language {lang!r} is neither run nor checked: use one of "
                            f"{sorted({*RUN_LANGS, *PARSE_LANGS, *TEXT_LANGS})}")
        blocks.append(CodeBlock(path, start + 1, lang, "\n".join(body) + "\n", mode, reason))
    return blocks, problems


FILES = markdown_files()


def _id(p: Path) -> str:
    return str(p.relative_to(ROOT))


# -- the format of every file --------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", FILES, ids=_id)
def test_code_blocks_are_well_formed(path: Path) -> None:
    """Every block has a known language; every marker has a reason and sits right before a block."""
    _, problems = parse_blocks(path)
    assert not problems, "\n".join(problems)


def test_parser_finds_unmarked_and_marked_blocks(tmp_path: Path) -> None:
    """The parser itself: a marked block is skipped with its reason, an unmarked one runs, a bare fence and a
    dangling marker are problems, fences inside a list item are found."""
    md = ROOT / "docs" / "_parser_check.md"  # a path under the repository, never written
    text = ("<!-- not run: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n```python\nx = 1\n```\n\n"
            "```\nbare\n```\n\n<!-- run: slow -->\n```bash\ntrue\n```\n<!-- not run: nothing follows -->\n\n"
            "1. item\n\n    ```python\n    y = 2\n    ```\n")
    blocks, problems = parse_blocks(md, text)
    assert [(b.lang, b.mode, b.reason) for b in blocks] == [
        ("bash", "skip", "needs a GPU"), ("python", "run", ""), ("", "run", ""), ("bash", "slow", ""), ("python", "run", "")]
    assert blocks[-1].code == "y = 2\n"
    assert len(problems) == 2 and "without a language" in problems[0] and "right before" in problems[1]


# -- running them ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small real image folders, written once for every file's blocks."""
    root = tmp_path_factory.mktemp("docs_data") / "data"
    fashion_folder(root / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 20, "train")
    fashion_folder(root / "val", {"trouser": 1, "bag": 8, "sandal": 5}, 5)
    fashion_folder(root / "ood", {"sneaker": 7, "coat": 4}, 5)
    return root


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One feature cache for every file's blocks (the same images are extracted once)."""
    return tmp_path_factory.mktemp("docs_cache")


def _run_python(block: CodeBlock, namespace: dict[str, object]) -> None:
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            exec(compile(block.code, block.where, "exec"), namespace)
    except Exception as e:  # noqa: BLE001 - any failure of a documented example fails the test, with its place
        raise AssertionError(f"{block.where}: the python block failed: {type(e).__name__}: {e}\n--- block ---\n"
                             f"{block.code}--- its output ---\n{out.getvalue()}") from e


def _run_bash(block: CodeBlock, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, (f"{block.where}: the bash block exited {proc.returncode}\n--- block ---\n{block.code}"
                                  f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")


def _check_parsed(block: CodeBlock, cwd: Path) -> None:
    try:
        if block.lang == "json":
            json.loads(block.code)
            return
        data = tomllib.loads(block.code)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise AssertionError(f"{block.where}: the {block.lang} block does not parse: {e}") from e
    if "train" in data or "benchmark" in data:  # a benchmark config: validate it as `tagood bench` would
        from tagood.bench.schema import validate_config

        validate_config({"name": "docs", **data}, block.where, base_dir=cwd)


def _run_file(path: Path, slow: bool, image_data: Path, cache: Path, tagood_home: Path,
              monkeypatch: pytest.MonkeyPatch) -> int:
    blocks, problems = parse_blocks(path)
    assert not problems, "\n".join(problems)
    # every file's blocks run in the folder holding data/ (one folder per test process): the same image paths give the
    # same cache entries, so each split is extracted once; what a block writes there has a name of its own
    work = image_data.parent
    monkeypatch.chdir(work)
    monkeypatch.setenv("TAGOOD_CACHE", str(cache))
    monkeypatch.setenv("TAGOOD_HOME", str(tagood_home))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TAGOOD_CACHE": str(cache), "TAGOOD_HOME": str(tagood_home), "COLUMNS": "120"}
    module = types.ModuleType(f"_docs_{re.sub(r'[^A-Za-z0-9]+', '_', str(_rel(path)))}")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # classes defined in a block resolve their annotations
    namespace: dict[str, object] = module.__dict__
    ran = 0
    for b in blocks:
        if b.mode == "skip" or (b.mode == "slow" and not slow) or b.lang in TEXT_LANGS:
            continue
        kind = RUN_LANGS.get(b.lang)
        if kind == "python":
            _run_python(b, namespace)
        elif kind == "bash":
            _run_bash(b, work, env)
        else:
            _check_parsed(b, work)
        ran += 1
    return ran


def _has(path: Path, mode: str) -> bool:
    return any(b.mode == mode and b.lang in RUN_LANGS for b in parse_blocks(path)[0])


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_code_blocks_run(path: Path, image_data: Path, shared_cache: Path, tagood_home: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block of the file that is not marked runs (or parses), in file order."""
    _run_file(path, False, image_data, shared_cache, tagood_home, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in FILES if _has(p, "slow")], ids=_id)
def test_code_blocks_run_with_slow_ones(path: Path, image_data: Path, shared_cache: Path, tagood_home: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, with the blocks marked ``<!-- run: slow -->``."""
    _run_file(path, True, image_data, shared_cache, tagood_home, monkeypatch)


def test_a_failing_block_fails(tmp_path: Path, image_data: Path, shared_cache: Path, tagood_home: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner is not a no-op: an unmarked block that fails is reported with its file and line; the same block
    marked ``not run`` is left alone."""
    bad = tmp_path / "bad.md"
    bad.write_text("```python\nraise ValueError('documented example is wrong')\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match=r"bad\.md:1: the python block failed: ValueError"):
        _run_python(parse_blocks(bad)[0][0], {})
    bad.write_text("```bash\nexit 3\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="exited 3"):
        _run_bash(parse_blocks(bad)[0][0], tmp_path, dict(os.environ))
    bad.write_text('```toml\n[train]\ntype = "folder"\nroot = 42\n[test]\ntype = "folder"\nroot = "t"\n'
                   '[ood.o]\ntype = "folder"\nroot = "o"\n```\n', encoding="utf-8")
    with pytest.raises(Exception, match="train.root"):
        _check_parsed(parse_blocks(bad)[0][0], tmp_path)
    marked, _ = parse_blocks(bad, "<!-- not run: shows a failure -->\n```python\nraise ValueError\n```\n")
    assert marked[0].mode == "skip"


# -- doctests -------------------------------------------------------------------------------------------------------
def _doctest_modules() -> list[str]:
    mods = []
    for p in sorted(SRC.rglob("*.py")):
        if ">>>" in p.read_text(encoding="utf-8"):
            parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
            mods.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return mods


@pytest.mark.parametrize("module", _doctest_modules())
def test_doctests(module: str, tmp_path: Path, tagood_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``>>>`` examples of every module of src/tagood that has them run and give what they show."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TAGOOD_CACHE", str(tmp_path / "cache"))
    mod = importlib.import_module(module)
    examples = [e for t in doctest.DocTestFinder().find(mod) for e in t.examples]
    assert examples, f"{module} has '>>>' in its source but doctest finds no example in it"
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True, verbose=False)
    assert res.failed == 0, f"{res.failed} of {res.attempted} doctest examples of {module} failed (output above)"


def test_doctest_runner_covers_the_api_modules() -> None:
    """The doctest list is not empty and holds the modules whose examples the docs point to."""
    mods = _doctest_modules()
    assert {"tagood.metrics", "tagood.detectors.base", "tagood.bench.compare"} <= set(mods), mods


def test_bash_runs_this_checkouts_tagood() -> None:
    """The bash blocks find this environment's ``tagood`` first on PATH."""
    exe = Path(sys.executable).parent / "tagood"
    assert exe.exists() or shutil.which("tagood"), "install the package into the test environment (pip install -e .)"
