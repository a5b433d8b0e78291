"""Result writers: ``results.json`` (meta, IND accuracy, metric rows, diagnostics: :func:`build_results`),
``results.md`` (TagOOD Table 1 layout), ``results.csv``; and the run folder they go in (:func:`run_folder`: written
into a fresh sibling folder and swapped in as a whole, so a run folder never mixes files of two runs)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tagood.bench.groups import group_average_rows, is_group_row
from tagood.metrics import METRIC_NAMES as METRICS
from tagood.runtime.fileio import OutputPathError, atomic_write_files, check_output_dir, replaced_directory

if TYPE_CHECKING:  # rich is imported where a table is drawn
    from contextlib import AbstractContextManager

    from rich.console import Group

#: what a benchmark run folder holds: files (``vocabulary-*.tsv`` by pattern) and the ``plots`` folder
RUN_FILES = ("results.json", "results.md", "results.csv", "results.html", "scores.npz", "run.log", "comparison.json")
RUN_FOLDERS = ("plots",)


def average_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One ``"ood": "average"`` row per method: the mean of each metric over its OOD sets (group-average rows,
    :mod:`tagood.bench.groups`, are not sets). A test-time method's row keeps its ``"test_time": True``."""
    out: list[dict[str, Any]] = []
    methods: list[str] = []
    for r in rows:
        if r["ood"] != "average" and r["method"] not in methods:
            methods.append(r["method"])
    for m in methods:
        mine = [r for r in rows if r["method"] == m and r["ood"] != "average" and not is_group_row(r)]
        avg: dict[str, Any] = {"method": m, "ood": "average"}
        for k in METRICS:
            if all(k in r for r in mine):  # rows of older runs may lack newer metrics
                avg[k] = sum(r[k] for r in mine) / len(mine)
        if any(r.get("test_time") for r in mine):
            avg["test_time"] = True
        if any(r.get("oracle") for r in mine):  # decompose=oracle: reads ground truth (a diagnostic)
            avg["oracle"] = True
        out.append(avg)
    return out


def build_results(rows: list[dict[str, Any]], id_accuracy: float | None, meta: Mapping[str, Any],
                  diagnostics: list[dict[str, Any]] | None = None,
                  groups: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """The results document: per-(method, OOD set) rows in percent, group-average rows (``groups``: row name ->
    member sets, e.g. OpenOOD v1.5's ``near-average``; :func:`tagood.bench.groups.group_average_rows`), average
    rows, and (when given) the decomposition diagnostics of the tag-based methods
    (:mod:`tagood.bench.diagnostics`, fractions in [0, 1])."""
    grouped = group_average_rows(rows, groups or {})
    for g in grouped:
        if any(r.get("test_time") for r in rows if r["method"] == g["method"]):
            g["test_time"] = True
        if any(r.get("oracle") for r in rows if r["method"] == g["method"]):
            g["oracle"] = True
    out = {"meta": dict(meta), "id_accuracy": id_accuracy, "rows": rows + grouped + average_rows(rows)}
    if diagnostics is not None:
        out["diagnostics"] = diagnostics
    return out


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _cell(r: Mapping[str, Any] | None, k: str) -> str:
    """A table cell: the value, with its bootstrap interval ``[low, high]`` when the row has one."""
    if not r:
        return "-"
    ci = r.get("ci")
    if ci and k in ci:
        return f"{_fmt(r[k])} [{_fmt(ci[k][0])}, {_fmt(ci[k][1])}]"
    return _fmt(r[k])


def ood_sets(results: Mapping[str, Any]) -> list[str]:
    """The table's columns: the OOD sets in row order, then the group averages, then ``"average"``."""
    sets: list[str] = []
    groups: list[str] = []
    for r in results["rows"]:
        target = groups if is_group_row(r) else sets
        if r["ood"] not in sets and r["ood"] not in groups and r["ood"] != "average":
            target.append(r["ood"])
    return sets + groups + ["average"]


def methods(results: Mapping[str, Any], test_time: bool | None = None) -> list[str]:
    """Methods in row order; ``test_time=True`` / ``False`` keeps only test-time / static ones."""
    ms: list[str] = []
    for r in results["rows"]:
        if r["method"] not in ms and (test_time is None or bool(r.get("test_time")) == test_time):
            ms.append(r["method"])
    return ms


def stream_note(results: Mapping[str, Any]) -> str:
    """How the test-time methods were fed: the stream's seed and IND:OOD ratio (from ``meta.streams``)."""
    streams = (results.get("meta") or {}).get("streams") or {}
    parts = []
    for m, rec in streams.items():
        for key, plan in (rec.get("streams") or {}).items():
            counts = ", ".join(f"{k} {v}" for k, v in plan.get("counts", {}).items())
            parts.append(f"{m}: {rec.get('mode', 'joint')} stream{'' if key == 'joint' else ' ' + key}, seed {plan.get('seed')}, "
                         f"IND:OOD {plan.get('realised_ratio')} ({counts})")
    return "; ".join(parts)


def to_markdown(results: Mapping[str, Any], title: str = "") -> str:
    """TagOOD Table 1 layout: one row per method; AUROC (higher is better) and FPR95 (lower is better) per OOD set,
    then Average."""
    sets = ood_sets(results)
    idx = {(r["method"], r["ood"]): r for r in results["rows"]}
    buf = io.StringIO()
    if title:
        buf.write(f"### {title}\n\n")
    head = "| Method | " + " | ".join(f"{s} AUROC↑ | {s} FPR95↓" for s in sets) + " |\n"
    for test_time in (False, True):
        ms = methods(results, test_time)
        if not ms:
            continue
        if test_time:
            buf.write("\n#### Test-time methods (scored on a seeded stream of the IND test and OOD images; "
                      "not comparable one to one with the static methods above)\n\n")
            note = stream_note(results)
            if note:
                buf.write(f"Stream: {note}.\n\n")
        buf.write(head)
        buf.write("|---|" + "---:|" * (2 * len(sets)) + "\n")
        for m in ms:
            cells = []
            for s in sets:
                r = idx.get((m, s))
                cells += [_cell(r, "auroc"), _cell(r, "fpr95")]
            buf.write(f"| {m} | " + " | ".join(cells) + " |\n")
    acc = results.get("id_accuracy")
    buf.write("\nFPR95 is the IND-positive convention (FPR of OOD at 95% TPR of IND; TagOOD/MCM papers). ")
    buf.write("Values in percent.")
    ci = next((r["ci"] for r in results["rows"] if r.get("ci")), None)
    if ci:
        buf.write(f" Brackets: {100 * ci['level']:.0f}% percentile-bootstrap intervals ({ci['n_boot']} replicates).")
    if acc is not None:
        buf.write(f" IND classification accuracy of the linear head: {acc:.2f}%.")
    buf.write("\n")
    buf.write(diagnostics_markdown(results.get("diagnostics") or []))
    warnings = (results.get("meta") or {}).get("warnings") or []
    if warnings:
        buf.write("\n#### Warnings\n\n" + "".join(f"* {w}\n" for w in warnings))
    return buf.getvalue()


#: diagnostics columns shown in results.md: (key, header); fractions are shown in percent
DIAG_COLUMNS = (("no_tag_fraction", "no tag %"), ("tokens_per_image", "tokens/image"), ("token_fraction", "tokens %"),
                ("object_fraction", "with object %"), ("object_token_fraction", "object tokens %"),
                ("mask_precision", "mask precision %"), ("mask_recall", "mask recall %"),
                ("mask_iou", "mask IoU %"), ("distractor_fraction", "on distractors %"))


def diagnostics_markdown(diag: Sequence[Mapping[str, Any]]) -> str:
    """The decomposition diagnostics as a table (one row per method and split); mask columns only when
    some split has object masks."""
    if not diag:
        return ""
    cols = [(k, h) for k, h in DIAG_COLUMNS if any(k in r for r in diag)]
    buf = io.StringIO()
    buf.write("\n#### Decomposition diagnostics\n\n")
    buf.write("| Method | Split | " + " | ".join(h for _, h in cols) + " |\n")
    buf.write("|---|---|" + "---:|" * len(cols) + "\n")
    notes = sorted({r["mask_note"] for r in diag if r.get("mask_note")})
    for r in diag:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            cells.append("-" if v is None else f"{v:.1f}" if k == "tokens_per_image" else f"{100 * v:.1f}")
        buf.write(f"| {r['method']} | {r['split']} | " + " | ".join(cells) + " |\n")
    buf.write("\nno tag: images without a kept IND tag; tokens: kept tokens per image with a tag (and as a share of all "
              "tokens); mask columns: kept spatial tokens against the object tokens (a token is object when at least half "
              "of its grid cell is object), micro-averaged over images with a tag and an object token; object tokens: "
              "their share of those images' tokens (the precision of a random choice); on distractors: kept tokens on "
              "distractor objects.")
    if notes:
        buf.write(" No mask columns where: " + "; ".join(notes) + ".")
    buf.write("\n")
    return buf.getvalue()


def to_csv(results: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    with_ci = any(r.get("ci") for r in results["rows"])
    ci_cols = [f"{k}_ci_{e}" for k in METRICS for e in ("low", "high")] if with_ci else []
    w.writerow(["method", "ood", *METRICS, *ci_cols])
    for r in results["rows"]:
        ci = r.get("ci") or {}
        bounds = [f"{ci[k][i]:.6f}" if k in ci else "" for k in METRICS for i in (0, 1)] if with_ci else []
        w.writerow([r["method"], r["ood"], *(f"{r[k]:.6f}" if k in r else "" for k in METRICS), *bounds])
    return buf.getvalue()


def write_all(results: Mapping[str, Any], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """Write results.json / results.md / results.csv into ``out_dir`` (created); returns the paths.

    The three are written in full to temp files first and only then renamed into place
    (:func:`tagood.runtime.fileio.atomic_write_files`): a full disk leaves the old three, never a mix.
    """
    out = Path(out_dir)
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "csv": out / "results.csv"}
    data = {paths["json"]: json.dumps(results, indent=1, default=str).encode(),
            paths["md"]: to_markdown(results, title).encode(), paths["csv"]: to_csv(results).encode()}
    atomic_write_files(data)
    return paths


def check_run_folder(path: Path) -> None:
    """Refuse to replace a folder that holds anything a benchmark run does not write (:data:`RUN_FILES`,
    ``vocabulary-*.tsv``, :data:`RUN_FOLDERS`, leftover hidden ``.tmp`` files).

    Raises:
        tagood.runtime.fileio.OutputPathError: naming the first such entry and what to do.
    """
    for entry in sorted(path.iterdir()):
        name = entry.name
        ours = (name in RUN_FILES and entry.is_file() and not entry.is_symlink()) or (
            name in RUN_FOLDERS and entry.is_dir() and not entry.is_symlink()) or (
            name.startswith("vocabulary-") and name.endswith(".tsv") and entry.is_file()) or (
            name.startswith(".") and name.endswith(".tmp"))
        if not ours:
            raise OutputPathError(f"{path} holds {name!r}, which a benchmark run does not write; a run replaces its --out "
                                  f"folder as a whole, so pass a new or empty folder (or one an earlier run wrote), or "
                                  f"move {name!r} out of {path}")


def run_folder(path: str | Path) -> AbstractContextManager[Path]:
    """A fresh folder to write a whole run into, swapped in for ``path`` on a clean exit
    (:func:`tagood.runtime.fileio.replaced_directory`): ``path`` then holds the new run's files only, and after an
    error (a full disk, Ctrl-C) it is left exactly as it was. A folder holding files a run did not write is refused
    (:func:`check_run_folder`). Nested calls (the runner inside ``tagood bench``) write into the outer one."""
    return replaced_directory(path, check_run_folder)


def rich_table(results: Mapping[str, Any], title: str = "") -> Group:
    """The terminal tables: AUROC and FPR95 (IND positive) per OOD set and group, the average with both FPR95
    conventions; test-time methods in a table of their own."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    sets = ood_sets(results)
    idx = {(r["method"], r["ood"]): r for r in results["rows"]}
    tables = []
    for test_time in (False, True):
        ms = methods(results, test_time)
        if not ms:
            continue
        name = title if not test_time else f"{title} -- test-time methods, on a stream ({stream_note(results)})"
        t = Table(title=escape(name) if name else None, show_lines=False,
                  caption="FPR95 IND+: FPR of OOD at 95% TPR of IND (TagOOD / MCM papers); "
                          "FPR95 OOD+: FPR of IND at 95% TPR of OOD (OpenOOD v1.5)")
        t.add_column("Method", style="bold", overflow="fold")
        for s in sets:
            t.add_column(f"{escape(s)}\nAUROC↑", justify="right", overflow="fold")
            t.add_column(f"{escape(s)}\nFPR95↓ IND+", justify="right", overflow="fold")
        t.add_column("average\nFPR95↓ OOD+", justify="right", overflow="fold")
        for m in ms:
            cells = []
            for s in sets:
                r = idx.get((m, s))
                cells += [escape(_cell(r, "auroc")), escape(_cell(r, "fpr95"))]
            cells.append(escape(_cell(idx.get((m, "average")), "fpr95_ood_pos")))
            t.add_row(escape(m), *cells)  # method variants such as tagood[tau=0.25] are not markup
        tables.append(t)
    return Group(*tables)


def load(path: str | Path) -> dict[str, Any]:
    """The results document a run wrote (``results.json``)."""
    out: dict[str, Any] = json.loads(Path(path).read_text())
    return out
