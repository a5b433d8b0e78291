"""Render the generated tables of README.md and docs/**/*.md from the code and from committed result files.

A generated table sits between two HTML comments, which Markdown renderers (GitHub, MkDocs) do not show::

    <!-- results: docs/results/demo-scenes/results.json -->
    ...the table, rewritten by this script...
    <!-- end results -->

Kinds of block (paths are relative to the repository root, options are ``key=value`` words):

* ``<!-- results: PATH [part=all|table|diagnostics] -->``: the results table of a benchmark run's ``results.json``
  exactly as the run's ``results.md`` shows it (:func:`tagood.bench.report.writers.to_markdown`); ``part=table``
  leaves out the diagnostics and warnings, ``part=diagnostics`` is the diagnostics table alone. A line above the
  table names the file, the run's command, commit and date (from the file's ``meta``, else from a ``source.json``
  beside it).
* ``<!-- compare: PATH a=METHOD b=METHOD [n_boot=1000] [seed=0] -->``: the paired bootstrap of method ``a`` minus
  method ``b`` (:func:`tagood.bench.compare.compare`) on the per-sample scores file ``PATH`` (``scores.npz``).
* ``<!-- ladder: PATH -->``: the decomposition ladder table of a ``ladder.json`` written by ``tagood demo --ladder``
  (:func:`tagood.bench.ladder.ladder_markdown`), under a line naming the file and the localisation it chose.
* ``<!-- sizes: PATH -->``: the install-size measurement ``PATH`` written by ``scripts/measure_install_sizes.py``
  (each install step's packages, size and share of the whole install).
* ``<!-- testing: PATH -->``: the score table of the mutation gate's ``--json`` file (``benchmarks/mutation.py``),
  or the measured times of a ``test-times.json`` (``times``: what, command, minutes).
* ``<!-- scaling: PATH [plot=PNG] -->``: the per-stage table of the scale rehearsal's result file ``PATH``
  (``benchmarks/scale_rehearsal.py --json``): scale, stage, N, wall time, throughput, peak RSS, peak anonymous RSS,
  disk, and the time and memory ratios against the scale 10x smaller; with ``plot=PNG``, the plot drawn from the same
  file by ``scripts/plot_scaling.py`` above the table (an error names the command when the plot is missing or was
  drawn from another version of the file).
* ``<!-- peers: PATH -->``: the pairs of ``benchmarks/peers.py --json`` (tagood vs pytorch-ood and faiss): median
  times, ratio and the float64 reference check of each, and the smallest ratio.
* ``<!-- torchrun-memory: PATH -->``: each stage's peak RSS in one process and on each rank of
  ``benchmarks/torchrun_memory.py --json``.
* ``<!-- extract-throughput: PATH -->``: pipeline vs decoding alone of ``benchmarks/extract_throughput.py --json``.
* ``<!-- options: NAME -->``: the options of detector ``NAME`` from its one declaration
  (:func:`tagood.detectors.options.describe`).
* ``<!-- methods: all|classic|tagood|vlm -->``: the registered detectors of a family with their paper, the inputs
  they read and what is special about them, each name linking to its section of the family's docs page.
* ``<!-- fields: MODULE.NAME [own] -->``: the keys of a pydantic model (a benchmark config table: type and range,
  default, description), ``own`` leaving out those its base classes declare; a dict of models (``SPLIT_TYPES``) gives
  one row per entry with the keys it adds.

Usage::

    python scripts/render_docs_tables.py            # rewrite every stale block in README.md and docs/
    python scripts/render_docs_tables.py --check    # exit 1 naming every stale block (what tests/test_docs_tables.py does)

When a code change moves a number, re-run the benchmark, copy its ``results.json`` / ``scores.npz`` under
``docs/results/<name>/`` and run this script; never edit a generated table by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

log = logging.getLogger("render_docs_tables")

KINDS = ("results", "compare", "options", "methods", "fields", "sizes", "ladder", "testing", "scaling", "peers",
         "torchrun-memory", "extract-throughput")
#: one generated block: the opening comment (kind and arguments), the body, the closing comment
BLOCK = re.compile(r"(?P<open><!-- (?P<kind>" + "|".join(KINDS) + r"): (?P<args>[^\n]*?) -->\n)"
                   r"(?P<body>.*?)(?P<close><!-- end (?P=kind) -->)", re.S)
#: an opening comment, to find blocks without their closing comment
OPENING = re.compile(r"<!-- (?P<kind>" + "|".join(KINDS) + r"): ")

#: family -> (docs page, title); a detector's family is the package its class lives in
FAMILIES: dict[str, tuple[str, str]] = {
    "classic": ("docs/methods/classic.md", "Classic logit and feature methods"),
    "tagood": ("docs/methods/tagood.md", "The TagOOD family"),
    "vlm": ("docs/methods/vision-language.md", "Vision-language methods"),
}


class RenderError(Exception):
    """A generated block cannot be rendered: a bad opening comment, a missing file, an unknown detector."""


@dataclass(frozen=True)
class Block:
    """One generated block of a Markdown file."""

    path: Path
    kind: str
    args: str
    body: str
    line: int
    start: int
    end: int

    @property
    def where(self) -> str:
        """``file:line`` of the opening comment."""
        return f"{_rel(self.path)}:{self.line}"


def _rel(p: Path) -> str:
    try:
        return p.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(p)


def markdown_files(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/, in a stable order.

    Args:
        root: the repository root.

    Returns:
        The files that exist.
    """
    files = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def blocks(path: Path, text: str | None = None) -> list[Block]:
    """The generated blocks of one Markdown file.

    Args:
        path: the file.
        text: its text (default: read it).

    Returns:
        The blocks in file order.

    Raises:
        RenderError: an opening comment has no ``<!-- end KIND -->`` after it.
    """
    text = path.read_text(encoding="utf-8") if text is None else text
    out = [Block(path, m["kind"], m["args"].strip(), m["body"], text.count("\n", 0, m.start()) + 1, m.start(), m.end())
           for m in BLOCK.finditer(text)]
    covered = [(b.start, b.end) for b in out]
    for m in OPENING.finditer(text):
        if not any(s <= m.start() < e for s, e in covered):
            line = text.count("\n", 0, m.start()) + 1
            raise RenderError(f"{_rel(path)}:{line}: '<!-- {m['kind']}: ... -->' has no '<!-- end {m['kind']} -->' after it")
    return out


def _parse_args(args: str, where: str) -> tuple[list[str], dict[str, str]]:
    words = shlex.split(args)
    pos = [w for w in words if "=" not in w]
    kw = dict(w.split("=", 1) for w in words if "=" in w)
    if not pos:
        raise RenderError(f"{where}: the comment names nothing (e.g. '<!-- results: docs/results/NAME/results.json -->')")
    return pos, kw


def _link(target: Path, page: Path) -> str:
    """A relative link from ``page`` to ``target`` (both in the repository)."""
    return Path(os.path.relpath(target.resolve(), page.resolve().parent)).as_posix()


def _cell(text: str) -> str:
    """Text for a Markdown table cell: one line, pipes escaped, ``<`` escaped outside code spans (so that
    ``<method>`` is not read as an HTML tag)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


# -- results -----------------------------------------------------------------------------------------------
def provenance(results_path: Path, results: Mapping[str, Any]) -> dict[str, str]:
    """Where a results file comes from: ``command``, ``commit`` and ``date`` of the run.

    Read from the file's ``meta`` when the run recorded them, else from ``source.json`` beside the file (which
    records what the run did not).

    Args:
        results_path: the ``results.json`` file.
        results: its contents.

    Returns:
        The three fields (missing ones are ``""``).
    """
    meta = dict(results.get("meta") or {})
    side = results_path.parent / "source.json"
    extra = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
    return {k: str(meta.get(k) or extra.get(k) or "") for k in ("command", "commit", "date")}


def _source_line(path: Path, page: Path, results: Mapping[str, Any]) -> str:
    src = provenance(path, results)
    parts = [f"`{src['command']}`" if src["command"] else "a benchmark run"]
    if src["commit"]:
        parts.append(f"commit `{src['commit'][:10]}`")
    if src["date"]:
        parts.append(src["date"])
    return f"*Rendered from [`{_rel(path)}`]({_link(path, page)}): {', '.join(parts)}.*\n\n"


def render_results(args: str, page: Path, where: str) -> str:
    """The body of a ``results`` block.

    Args:
        args: the comment's arguments: ``PATH [part=all|table|diagnostics]``.
        page: the Markdown file the block is in (for the relative link).
        where: ``file:line``, for errors.

    Returns:
        The Markdown the block holds.
    """
    from tagood.bench.report.writers import diagnostics_markdown, to_markdown

    pos, kw = _parse_args(args, where)
    path = ROOT / pos[0]
    if not path.is_file():
        raise RenderError(f"{where}: no results file {pos[0]}")
    results = json.loads(path.read_text(encoding="utf-8"))
    part = kw.get("part", "all")
    if part == "all":
        body = to_markdown(results)
    elif part == "table":
        slim = {**results, "diagnostics": [], "meta": {**(results.get("meta") or {}), "warnings": []}}
        body = to_markdown(slim)
    elif part == "diagnostics":
        body = diagnostics_markdown(results.get("diagnostics") or []).lstrip("\n")
        body = re.sub(r"^#### Decomposition diagnostics\n\n", "", body)
        if not body:
            raise RenderError(f"{where}: {pos[0]} has no diagnostics")
    else:
        raise RenderError(f"{where}: part={part!r}: use part=all, part=table or part=diagnostics")
    return _source_line(path, page, results) + body.strip("\n") + "\n"


# -- paired comparison ---------------------------------------------------------------------------------------
def render_compare(args: str, page: Path, where: str) -> str:
    """The body of a ``compare`` block: ``PATH a=METHOD b=METHOD [n_boot=1000] [seed=0]``.

    Args:
        args: the comment's arguments.
        page: the Markdown file the block is in.
        where: ``file:line``, for errors.

    Returns:
        A table per OOD set and the average: AUROC of both, their difference with its interval and p-value, and the
        same for FPR95.
    """
    from tagood.bench.compare import compare

    pos, kw = _parse_args(args, where)
    path = ROOT / pos[0]
    if not path.is_file():
        raise RenderError(f"{where}: no scores file {pos[0]}")
    if "a" not in kw or "b" not in kw:
        raise RenderError(f"{where}: name the two methods, e.g. 'a=tagood b=cs'")
    n_boot, seed = int(kw.get("n_boot", 1000)), int(kw.get("seed", 0))
    res = compare(path, kw["a"], kw["b"], n_boot=n_boot, seed=seed)
    lines = [f"*Paired bootstrap of `{res.a}` minus `{res.b}` on the per-sample scores "
             f"[`{_rel(path)}`]({_link(path, page)}): {n_boot} replicates, seed {seed}, "
             f"{100 * res.level:.0f}% intervals; `tagood metrics RUN --compare \"{res.a},{res.b}\"` prints the same.*",
             "",
             f"| OOD set | AUROC {_cell(res.a)} | AUROC {_cell(res.b)} | difference [interval] | p "
             f"| FPR95 difference [interval] | p |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    def p_text(p: float) -> str:  # as `tagood metrics --compare` prints it
        return f"{p:.3f}" if p > 0 else f"<{1 / n_boot:.2g}"

    for name, by in res.sets.items():
        au, fp = by["auroc"], by["fpr95"]
        lines.append(f"| {name} | {au.a:.2f} | {au.b:.2f} | {au.diff:+.2f} [{au.low:+.2f}, {au.high:+.2f}] | "
                     f"{p_text(au.p)} | {fp.diff:+.2f} [{fp.low:+.2f}, {fp.high:+.2f}] | {p_text(fp.p)} |")
    return "\n".join(lines) + "\n"


def render_ladder(args: str, page: Path, where: str) -> str:
    """The body of a ``ladder`` block: ``PATH`` (a ``ladder.json``).

    Args:
        args: the comment's arguments.
        page: the Markdown file the block is in.
        where: ``file:line``, for errors.

    Returns:
        A line naming the file, backbone and chosen localisation, then the ladder table.
    """
    from tagood.bench.ladder import ladder_markdown

    pos, _kw = _parse_args(args, where)
    path = ROOT / pos[0]
    if not path.is_file():
        raise RenderError(f"{where}: no ladder file {pos[0]}")
    doc = json.loads(path.read_text(encoding="utf-8"))
    meta = doc.get("meta") or {}
    loc = meta.get("localisation") or {}
    line = (f"*Rendered from [`{_rel(path)}`]({_link(path, page)}): `tagood demo --ladder --backbone "
            f"{meta.get('backbone', '?')}`, seed {meta.get('seed', 0)}; reference: `{doc['reference']}` (the best "
            f"image-level method by average AUROC); localisation chosen on held-out IND training images: tag_maps="
            f"{loc.get('tag_maps', '?')}, tau={loc.get('tau', '?')}. Oracle rungs read ground truth at test time.*\n\n")
    return line + ladder_markdown(doc)


# -- detectors -----------------------------------------------------------------------------------------------
def family(cls: type) -> str:
    """``"tagood"``, ``"vlm"`` or ``"classic"``: the docs page a detector class belongs on.

    Args:
        cls: a registered detector class.

    Returns:
        The family name (a key of :data:`FAMILIES`).
    """
    mod = cls.__module__
    if mod.startswith("tagood.detectors.tagood"):
        return "tagood"
    if mod.startswith("tagood.detectors.vlm"):
        return "vlm"
    return "classic"


def anchor(name: str) -> str:
    """The id of the heading ``## name`` of a detector's section on its family page, as MkDocs (Python-Markdown's
    ``toc``) and GitHub both make it: punctuation dropped, lower case, spaces to hyphens (``ce+cs`` -> ``cecs``).

    Args:
        name: the detector's registered name.

    Returns:
        The heading's id.
    """
    slug = re.sub(r"[^\w\s-]", "", name).strip().lower()
    return re.sub(r"[-\s]+", "-", slug)


def _plain(text: str) -> str:
    from tagood.cli.methods import plain

    return plain(text)


def _summary(doc: str | None) -> str:
    """The first clause of a detector's docstring: up to its first colon or full stop outside brackets
    (``CS (TagOOD Table 3)``), without a long parenthesis."""
    text = _first_clause(doc)
    if len(text) <= 110:
        return text
    out: list[tuple[int, int] | None] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):  # drop top-level parentheses of 60 characters or more
        if ch == "(":
            if depth == 0:
                start = i
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
            if depth == 0:
                group = text[start : i + 1]
                out.append((start, i + 1) if len(group) >= 60 else None)
    cut = [g for g in out if g]
    for a, b in reversed(cut):
        text = text[:a].rstrip() + text[b:]
    return text


def _first_clause(doc: str | None) -> str:
    first = _plain(" ".join((doc or "").strip().split("\n\n", 1)[0].split()))
    depth, tick = 0, False
    for i, ch in enumerate(first):
        if ch == "`":
            tick = not tick
        elif not tick and ch in "([":
            depth += 1
        elif not tick and ch in ")]":
            depth = max(0, depth - 1)
        elif not tick and depth == 0 and ch in ":.;" and (i + 1 == len(first) or first[i + 1] == " "):
            return first[:i].strip()
    return first.strip()


def render_options(args: str, page: Path, where: str) -> str:
    """The body of an ``options`` block: every option of one detector from its ``Options`` declaration.

    Args:
        args: the detector's registered name.
        page: the Markdown file the block is in.
        where: ``file:line``, for errors.

    Returns:
        A table: option, type and range, default, description; or a sentence when the detector has none.
    """
    from tagood import detectors

    pos, _ = _parse_args(args, where)
    name = pos[0]
    if name not in detectors.available():
        raise RenderError(f"{where}: no detector named {name!r}; the detectors are {', '.join(detectors.available())}")
    opts = detectors.describe(name)
    if not opts:
        return f"`{name}` has no options.\n"
    lines = ["| option | type | default | description |", "|---|---|---|---|"]
    for o in opts:
        kind = f"{o.type} {o.constraint}".strip()
        lines.append(f"| `{o.name}` | {_cell(kind)} | `{_cell(o.default_text)}` | {_cell(_plain(o.description))} |")
    return "\n".join(lines) + "\n"


def render_methods(args: str, page: Path, where: str) -> str:
    """The body of a ``methods`` block: one row per registered detector of a family (or of all), in the order of the
    benchmarks' tables (other registered detectors after them, by name).

    Args:
        args: ``all``, ``classic``, ``tagood`` or ``vlm``.
        page: the Markdown file the block is in (for the links to the family pages).
        where: ``file:line``, for errors.

    Returns:
        A table: name (linked to its section), what it is (the first clause of its docstring), paper, inputs read,
        notes.
    """
    from tagood import detectors
    from tagood.bench.methods import default_methods
    from tagood.detectors.base import Detector

    pos, _ = _parse_args(args, where)
    which = pos[0]
    if which != "all" and which not in FAMILIES:
        raise RenderError(f"{where}: methods {which!r}: use all, {', '.join(FAMILIES)}")

    order = {n: i for i, n in enumerate(default_methods())}
    lines = ["| name | what it is | paper | reads | notes |", "|---|---|---|---|---|"]
    for name in sorted(detectors.available(), key=lambda n: (order.get(n, len(order)), n)):
        cls: type[Detector] = detectors.get_class(name)
        fam = family(cls)
        if which not in ("all", fam):
            continue
        needs = sorted(set(cls.requires) | set(cls.fit_requires or ()) | set(cls.context_requires))
        notes = [n for n, on in (("training-free", not cls.requires_fit), ("test-time", cls.test_time),
                                 ("cannot be saved", not cls.saveable)) if on]
        link = f"{_link(ROOT / FAMILIES[fam][0], page)}#{anchor(name)}"
        lines.append(f"| [`{name}`]({link}) | {_cell(_summary(cls.__doc__))} | {_cell(_plain(cls.paper) or '-')} "
                     f"| {_cell(', '.join(needs))} | {_cell(', '.join(notes))} |")
    return "\n".join(lines) + "\n"


# -- config keys ------------------------------------------------------------------------------------------------
def _import(dotted: str, where: str) -> Any:
    import importlib

    mod, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise RenderError(f"{where}: cannot import {dotted}: {e}") from None


def _default_text(model: Any, name: str) -> str:
    """A field's default as a user writes it in a config (``required`` when it has none)."""
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    from tagood.detectors.options import OptionInfo

    f = model.model_fields[name]
    if f.default_factory is not None:
        value = f.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            return "its defaults"
        return OptionInfo(name, "", value, "").default_text if value != {} else "empty"
    if f.default is PydanticUndefined:
        return "required"
    return OptionInfo(name, "", f.default, "").default_text


def _own_fields(model: Any) -> list[str]:
    inherited = {n for base in model.__mro__[1:] for n in getattr(base, "model_fields", {})}
    return [n for n in model.model_fields if n not in inherited]


def render_fields(args: str, page: Path, where: str) -> str:
    """The body of a ``fields`` block: the keys of a pydantic model (or a dict of models) from their declaration.

    Args:
        args: ``MODULE.NAME [own]``.
        page: the Markdown file the block is in.
        where: ``file:line``, for errors.

    Returns:
        A table: key, type and range, default, description (or, for a dict of models: name, keys, what it is).
    """
    from tagood.detectors.options import describe_options

    pos, _ = _parse_args(args, where)
    obj = _import(pos[0], where)
    if isinstance(obj, Mapping):
        lines = ["| type | its own keys (default) | what |", "|---|---|---|"]
        for key, model in obj.items():
            own = [f"`{n}` ({_default_text(model, n)})" for n in _own_fields(model) if n != "type"]
            what = _plain(" ".join((model.__doc__ or "").split(": ", 1)[-1].split()))
            lines.append(f"| `{key}` | {_cell(', '.join(own) or '-')} | {_cell(what)} |")
        return "\n".join(lines) + "\n"
    keep = set(_own_fields(obj)) if "own" in pos[1:] else set(obj.model_fields)
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for o in describe_options(obj):
        if o.name not in keep:
            continue
        kind = f"{o.type} {o.constraint}".strip()
        lines.append(f"| `{o.name}` | {_cell(kind)} | `{_cell(_default_text(obj, o.name))}` | {_cell(_plain(o.description))} |")
    return "\n".join(lines) + "\n"


def render_sizes(args: str, page: Path, where: str) -> str:
    """The body of a ``sizes`` block: the steps of ``scripts/measure_install_sizes.py``'s JSON file ``PATH``."""
    pos, _ = _parse_args(args, where)
    path = ROOT / pos[0]
    if not path.is_file():
        raise RenderError(f"{where}: no install-size file {pos[0]} (python scripts/measure_install_sizes.py writes it)")
    doc = json.loads(path.read_text(encoding="utf-8"))
    total = sum(float(r["mb"]) for r in doc["rows"])
    lines = [f"*Rendered from [`{_rel(path)}`]({_link(path, page)}): `{doc['command']}`, tagood {doc['tagood']}, "
             f"{doc['date']}, {doc['environment']}; {doc['unit']}.*", "",
             "| step | packages it adds | MB | share of the install |", "|---|---|---:|---:|"]
    lines += [f"| {_cell(r['what'])} | {_cell(', '.join(r['packages']))} | {float(r['mb']):.0f} | "
              f"{100 * float(r['mb']) / total:.0f}% |" for r in doc["rows"]]
    lines.append(f"| **all** | | **{total:.0f}** | 100% |")
    return "\n".join(lines) + "\n"


def render_testing(args: str, page: Path, where: str) -> str:
    """The body of a ``testing`` block: the mutation gate's scores, or the measured times of the test runs."""
    pos, _ = _parse_args(args, where)
    path = ROOT / pos[0]
    if not path.is_file():
        raise RenderError(f"{where}: no file {pos[0]} (benchmarks/mutation.py --json writes the mutation table)")
    doc = json.loads(path.read_text(encoding="utf-8"))
    head = f"*Rendered from [`{_rel(path)}`]({_link(path, page)})"
    if "times" in doc:
        lines = [f"{head}: {doc['machine']}, {doc['date']}.*", "", "| run | command | minutes |", "|---|---|---:|"]
        return "\n".join(lines + [f"| {_cell(r['what'])} | `{_cell(r['command'])}` | {float(r['minutes']):.0f} |"
                                  for r in doc["times"]]) + "\n"
    runs = "; ".join(f"`{r['command']}` (commit {r['commit']}, {r['date']}: {r['minutes']:.0f} minutes, "
                     f"{r['max_children']} mutants at a time)" for r in doc["runs"])
    lines = [f"{head}, {doc['tool']}: {runs}.*", "",
             "| module | mutants | reviewed equivalent | killed | survived | score |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| `{r['module']}` | {r['mutants']} | {r['equivalent']} | {r['killed']} | {r['survived']} | "
              f"{float(r['score']):.1f}% |" for r in doc["rows"]]
    return "\n".join(lines) + "\n"


# -- scale rehearsal --------------------------------------------------------------------------------------------
def _plot_scaling() -> Any:
    """``scripts/plot_scaling.py`` (beside this script) as a module: its file check and the plot's digest."""
    import importlib.util

    mod = sys.modules.get("plot_scaling")
    if mod is None:
        spec = importlib.util.spec_from_file_location("plot_scaling", Path(__file__).resolve().parent / "plot_scaling.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["plot_scaling"] = mod
        spec.loader.exec_module(mod)
    return mod


def _secs(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def render_scaling(args: str, page: Path, where: str) -> str:
    """The body of a ``scaling`` block: ``PATH [plot=PNG]`` (the scale rehearsal's ``--json`` file).

    Args:
        args: the comment's arguments.
        page: the Markdown file the block is in (for the relative links).
        where: ``file:line``, for errors.

    Returns:
        A line naming the file and its run, the plot (with ``plot=``), then one row per scale and stage.
    """
    ps = _plot_scaling()
    pos, kw = _parse_args(args, where)
    path = ROOT / pos[0]
    if not path.is_file():
        raise RenderError(f"{where}: no rehearsal result file {pos[0]} (python benchmarks/scale_rehearsal.py --json "
                          "writes it)")
    try:
        doc = ps.load_rehearsal(path)
    except ps.RehearsalFileError as e:
        raise RenderError(f"{where}: {e}") from None
    machine = doc.get("machine") or {}
    desc = [f"width {doc.get('width', '?')}", f"{doc.get('tokens', '?')} tokens", f"{doc.get('tags', '?'):,} tags"
            if isinstance(doc.get("tags"), int) else "tags ?"]
    if doc.get("tagood_epochs") is not None:
        desc.append(f"TagOOD's projector capped at {doc['tagood_epochs']} epoch(s)")
    if machine.get("cpus"):
        desc.append(f"{machine['cpus']} CPUs")
    head = (f"*Rendered from [`{_rel(path)}`]({_link(path, page)}): `{doc.get('command', 'a rehearsal run')}`, "
            f"{doc.get('date', 'undated')}; {', '.join(desc)}.")
    if doc.get("preliminary"):
        head += " Preliminary figures" + (f": {doc['note']}" if doc.get("note") else "") + "."
    lines = [head + " N is the number of images the stage handled; a ratio is the stage's cost over its cost at the "
             "scale 10x smaller (linear time = 10, flat memory = 1).*", ""]
    if "plot" in kw:
        png = ROOT / kw["plot"]
        redo = f"run python scripts/plot_scaling.py {pos[0]} --out {kw['plot']}"
        if not png.is_file():
            raise RenderError(f"{where}: no plot {kw['plot']}: {redo}")
        try:
            drawn_from = ps.png_text(png).get(ps.DIGEST_KEY)
        except ps.RehearsalFileError as e:
            raise RenderError(f"{where}: {e}: {redo}") from None
        if drawn_from != ps.source_digest(path):
            raise RenderError(f"{where}: the plot {kw['plot']} was not drawn from the current {pos[0]}: {redo}")
        lines += [f"![Wall time and peak RSS against N per stage, log-log]({_link(png, page)})", ""]
    ratios = {(r["stage"], r.get("scale")): r for r in doc.get("ratios", [])}

    def ratio(stage: str, scale: float, key: str) -> str:
        r = ratios.get((stage, scale), {}).get(key)
        return f"{r:g}" if isinstance(r, (int, float)) else "-"

    lines += ["| scale | stage | N | wall s | images/s | peak RSS MB | peak anon MB | disk MB (files) | time vs N/10 "
              "| peak RSS vs N/10 |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in doc["runs"]:
        sc = run["scale"]
        for st in run["stages"]:
            tp, anon = st["throughput_per_s"], st["peak_anon_mb"]  # anon: None where stages shared a process
            lines.append(f"| {sc:g} | `{_cell(st['stage'])}` | {st['items']:,} | {_secs(float(st['wall_s']))} | "
                         f"{'-' if tp is None else f'{tp:,.0f}'} | {st['peak_rss_mb']:,.0f} | "
                         f"{'-' if anon is None else f'{anon:,.0f}'} | "
                         f"{st['disk_bytes'] / 2**20:,.1f} ({st['disk_files']:,}) | "
                         f"{ratio(st['stage'], sc, 'time_ratio')} | {ratio(st['stage'], sc, 'rss_ratio')} |")
    return "\n".join(lines + _scaling_goals(doc, ratios)) + "\n"


#: the rehearsal's goals: peak RSS at most 4 GiB, and time within 1.5x of linear (cost(N) / cost(N/10) <= 15)
GOAL_RSS_MB, GOAL_TIME_RATIO = 4096.0, 15.0


def _scaling_goals(doc: Mapping[str, Any], ratios: Mapping[tuple[str, Any], Mapping[str, Any]]) -> list[str]:
    """The goals table of a rehearsal file's largest scale: per stage, its peak RSS against 4 GiB and its time
    ratio against the scale 10x smaller against 15 (1.5x of linear); empty when no scale has a partner 10x below."""
    big = max(doc["runs"], key=lambda r: float(r["scale"]))
    if not any(k[1] == big["scale"] for k in ratios):
        return []
    out = ["", f"Goals at scale {big['scale']:g} (against {GOAL_RSS_MB / 1024:g} GiB of peak RSS, and a time ratio of at "
           f"most {GOAL_TIME_RATIO:g} against the scale 10x smaller, 1.5x of linear):", "",
           "| stage | peak RSS MB | RSS goal | time vs N/10 | time goal |", "|---|---:|---|---:|---|"]
    # files written before the bench counted storage reads have no such column
    reads = any(st.get("storage_read_mb") is not None for st in big["stages"])
    if reads:
        out[-2:] = ["| stage | peak RSS MB | RSS goal | time vs N/10 | time goal | read from storage MB |",
                    "|---|---:|---|---:|---|---:|"]
    for st in big["stages"]:
        tr = ratios.get((st["stage"], big["scale"]), {}).get("time_ratio")
        rss_ok = "met" if st["peak_rss_mb"] <= GOAL_RSS_MB else "**missed**"
        t_ok = "-" if not isinstance(tr, (int, float)) else ("met" if tr <= GOAL_TIME_RATIO else "**missed**")
        rd = st.get("storage_read_mb")
        out.append(f"| `{_cell(st['stage'])}` | {st['peak_rss_mb']:,.0f} | {rss_ok} | "
                   f"{'-' if tr is None else f'{tr:g}'} | {t_ok} |" + (f" {'-' if rd is None else f'{rd:,.0f}'} |"
                                                                        if reads else ""))
    return out


def _result_file(args: str, where: str, script: str, keys: Sequence[str]) -> tuple[Path, dict[str, Any]]:
    """The result file a block names (its first argument) and its contents, which must hold ``keys``.

    Raises:
        RenderError: the file is missing, not JSON, or lacks a key; the message names it and ``script``.
    """
    pos, _ = _parse_args(args, where)
    path = ROOT / pos[0]
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in keys if k not in doc]
    except (OSError, ValueError, TypeError) as e:
        missing, doc = [repr(e)], {}
    if missing:
        raise RenderError(f"{where}: {pos[0]} is not a result file of {script} --json (missing or unreadable: "
                          f"{', '.join(missing)}); rerun it")
    return path, doc


def render_peers(args: str, page: Path, where: str) -> str:
    """The body of a ``peers`` block: ``PATH`` (the ``--json`` file of ``benchmarks/peers.py``).

    Args:
        args: the comment's arguments.
        page: the Markdown file the block is in (for the relative link).
        where: ``file:line``, for errors.

    Returns:
        A line naming the file, its command, machine and shapes, then one row per pair (median times, ratio, the
        float64 reference check) and the smallest ratio.
    """
    path, doc = _result_file(args, where, "benchmarks/peers.py", ("rows", "shapes", "machine", "smallest"))
    rows, shapes, machine, smallest = doc["rows"], doc["shapes"], doc["machine"], doc["smallest"]
    head = (f"*Rendered from [`{_rel(path)}`]({_link(path, page)}): `{doc.get('command', 'a peers run')}`, "
            f"{doc.get('date', 'undated')}; {machine.get('cpus', '?')} CPUs"
            f"{' (' + machine['processor'] + ')' if machine.get('processor') else ''}, "
            f"{doc.get('threads', '?')} threads per side, median of {doc.get('repeats', '?')} interleaved runs; "
            f"{shapes['n_train']:,} x {shapes['dim']:,} training features, {shapes['classes']} classes, "
            f"{shapes['n_eval']:,} evaluation features, k = {shapes['k']}; metrics on {shapes['metrics_n']:,} scores. "
            "Ratio = peer time / tagood time (above 1: tagood is faster).*")
    lines = [head, "", "| pair | peer | tagood s | peer s | ratio | check |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| `{_cell(r['pair'])}` | {_cell(r['peer'])} | {r['ours_s']:.4g} | {r['peer_s']:.4g} | "
                     f"{r['ratio']:.2f}x | {'ok' if r['ok'] else 'FAILED'}: {_cell(r['check'])} |")
    lines += ["", f"Smallest ratio: **{smallest['ratio']:.2f}x** (`{_cell(smallest['pair'])}`)."]
    return "\n".join(lines) + "\n"


def render_torchrun_memory(args: str, page: Path, where: str) -> str:
    """The body of a ``torchrun-memory`` block: ``PATH`` (the ``--json`` file of ``benchmarks/torchrun_memory.py``).

    Args:
        args: the comment's arguments.
        page: the Markdown file the block is in (for the relative link).
        where: ``file:line``, for errors.

    Returns:
        A line naming the file and its run, then each stage's peak RSS in one process and on each rank.
    """
    path, doc = _result_file(args, where, "benchmarks/torchrun_memory.py",
                             ("peak_rss_bytes", "sizes", "head_detectors_peak_rss_bytes"))
    peaks, sizes, whole = doc["peak_rss_bytes"], doc["sizes"], doc["head_detectors_peak_rss_bytes"]
    ranks = [k for k in peaks if k != "single"]
    head = (f"*Rendered from [`{_rel(path)}`]({_link(path, page)}): `{doc.get('command', 'a run')}`; "
            f"{sizes.get('train', 0):,} training images at width {doc.get('width', '?')}, {doc.get('cpus', '?')} CPUs; "
            f"{doc.get('note', '')}. Peak RSS in MiB per stage.*")
    lines = [head, "", "| stage | one process | " + " | ".join(ranks) + " |", "|---|" + "---:|" * (1 + len(ranks))]
    for stage in peaks["single"]:
        cells = [f"{peaks[k].get(stage, 0) / 2**20:,.0f}" for k in ("single", *ranks)]
        lines.append(f"| `{_cell(stage)}` | " + " | ".join(cells) + " |")
    cells = [f"{whole[k] / 2**20:,.0f}" for k in ("single", *ranks)]
    lines += ["| head and detectors, largest | " + " | ".join(cells) + " |", "",
              f"Scores equal on every rank and in one process: {'yes' if doc.get('auroc_equal') else '**no**'}."]
    return "\n".join(lines) + "\n"


def render_extract_throughput(args: str, page: Path, where: str) -> str:
    """The body of an ``extract-throughput`` block: ``PATH`` (``benchmarks/extract_throughput.py --json``).

    Args:
        args: the comment's arguments.
        page: the Markdown file the block is in (for the relative link).
        where: ``file:line``, for errors.

    Returns:
        A line naming the file and its run, each decode kind's throughput alone and in the pipeline, and the ratio.
    """
    path, doc = _result_file(args, where, "benchmarks/extract_throughput.py",
                             ("images_per_s", "pipeline_vs_decode_alone", "machine"))
    ips, ratio, machine = doc["images_per_s"], float(doc["pipeline_vs_decode_alone"]), doc["machine"]
    head = (f"*Rendered from [`{_rel(path)}`]({_link(path, page)}): `{doc.get('command', 'a run')}`, "
            f"{doc.get('date', 'undated')}; {doc['images']:,} images, batch {doc['batch_size']}, {doc['workers']} decode "
            f"workers, {doc['backbone']} backbone, {machine.get('cpus', '?')} CPUs, best of {doc.get('repeats', '?')}.*")
    lines = [head, "", "| decode workers | decoding alone (images/s) | pipeline (images/s) | pipeline / decoding alone |",
             "|---|---:|---:|---:|"]
    for kind, v in ips.items():
        lines.append(f"| {_cell(kind)} | {v['decode_alone']:,.1f} | {v['pipeline']:,.1f} | "
                     f"{v['decode_alone'] and v['pipeline'] / v['decode_alone']:.2f} |")
    lines += ["", f"The default ({_cell(doc['decode'])}): pipeline / decoding alone = **{ratio:.2f}**."]
    return "\n".join(lines) + "\n"


RENDERERS: dict[str, Callable[[str, Path, str], str]] = {
    "extract-throughput": render_extract_throughput,
    "ladder": render_ladder, "scaling": render_scaling, "peers": render_peers,
    "torchrun-memory": render_torchrun_memory,
    "results": render_results, "compare": render_compare, "options": render_options, "methods": render_methods,
    "fields": render_fields, "sizes": render_sizes, "testing": render_testing}


# -- the files ------------------------------------------------------------------------------------------------
def render_block(b: Block) -> str:
    """What block ``b`` should hold.

    Args:
        b: a generated block.

    Returns:
        Its body, ending in a newline.
    """
    return RENDERERS[b.kind](b.args, b.path, b.where)


def rendered(path: Path) -> tuple[str, list[Block]]:
    """The text ``path`` should have, and its blocks whose body differs from it.

    Args:
        path: a Markdown file.

    Returns:
        ``(new_text, stale_blocks)``.
    """
    text = path.read_text(encoding="utf-8")
    out: list[str] = []
    stale: list[Block] = []
    pos = 0
    for b in blocks(path, text):
        body = "\n" + render_block(b) + "\n"
        if b.body != body:
            stale.append(b)
        m = BLOCK.match(text, b.start)
        assert m is not None
        out += [text[pos : b.start], m["open"], body, m["close"]]
        pos = b.end
    out.append(text[pos:])
    return "".join(out), stale


def iter_stale(files: Sequence[Path]) -> Iterator[tuple[Path, str, list[Block]]]:
    """For each file with a stale block: the file, its new text and the stale blocks.

    Args:
        files: Markdown files.

    Yields:
        ``(path, new_text, stale_blocks)``.
    """
    for f in files:
        text, stale = rendered(f)
        if stale:
            yield f, text, stale


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or, with ``--check``, list) the stale generated blocks.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 1 when ``--check`` found a stale block.
    """
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/**/*.md)")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    files = a.files or markdown_files()
    n = 0
    for path, text, stale in iter_stale(files):
        n += len(stale)
        for b in stale:
            log.info("%s: %s block '%s' %s", b.where, b.kind, b.args, "is stale" if a.check else "rewritten")
        if not a.check:
            path.write_text(text, encoding="utf-8")
    if a.check and n:
        log.error("%d generated block(s) differ from what the code and result files give: "
                  "run python scripts/render_docs_tables.py", n)
        return 1
    log.info("%d block(s) %s", n, "stale" if a.check else "rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
