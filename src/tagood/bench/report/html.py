"""``results.html``: one page per benchmark run, openable offline (no script, no network; figures are
referenced by relative path, ``plots/<name>.png``, so the run folder can be moved or zipped whole).

It shows, from ``results.json`` (:func:`tagood.bench.report.writers.build_results`):

* the OOD table in the layout of the TagOOD paper's Table 1 (AUROC and FPR95 per OOD set, then the group
  averages and the average), the IND accuracy of the linear head, test-time methods in their own table;
* every metric of every (method, OOD set) row, in percent;
* the decomposition diagnostics of the tag-based methods (percent of images / tokens;
  :mod:`tagood.bench.diagnostics`) and the run's warnings;
* every figure in ``plots/`` (overview, per-method histograms + ROC, token pictures) and links to
  ``run.log``, ``results.json`` and the ``vocabulary-<method>.tsv`` files.

Scores are OOD scores: higher = more OOD. FPR95 "IND+" is the FPR of OOD at 95% TPR of IND (TagOOD /
MCM papers); "OOD+" the FPR of IND at 95% TPR of OOD (OpenOOD v1.5). Each number cell carries its
exact value in ``data-value`` (``repr`` of the float) for machine checks.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tagood.bench.report.writers import METRICS, ood_sets
from tagood.bench.report.writers import methods as row_methods

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em;
       color: #1d1d1f; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f2f2f4; }
tr:nth-child(even) td { background: #fafafa; }
td.best { font-weight: bold; }
.note { color: #555; font-size: 0.85em; }
.warn { color: #8a4b00; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any, method: str, ood: str, metric: str, scale: float = 1.0, best: bool = False) -> str:
    """A number cell (two decimals) with its exact value and identity in data attributes."""
    attrs = f' data-method="{_e(method)}" data-ood="{_e(ood)}" data-metric="{_e(metric)}"'
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f'<td class="num"{attrs}>-</td>'
    return (f'<td class="num{" best" if best else ""}"{attrs} data-value="{float(v)!r}">'
            f"{scale * float(v):.2f}</td>")


def _row_map(results: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    return {(r["method"], r["ood"]): r for r in results["rows"]}


def _main_table(results: Mapping[str, Any], methods: Sequence[str], cls: str) -> str:
    sets = ood_sets(results)
    rows = _row_map(results)
    head1 = "".join(f'<th colspan="2">{_e(s)}</th>' for s in sets)
    head2 = "<th>AUROC&uarr;</th><th>FPR95&darr;</th>" * len(sets)
    best: dict[tuple[str, str], float] = {}
    for s in sets:
        vals = [rows[(m, s)] for m in methods if (m, s) in rows]
        if vals:
            best[(s, "auroc")] = max(r["auroc"] for r in vals)
            best[(s, "fpr95")] = min(r["fpr95"] for r in vals)
    body = []
    for m in methods:
        cells = []
        for s in sets:
            r = rows.get((m, s))
            for k in ("auroc", "fpr95"):
                v = None if r is None else r.get(k)
                cells.append(_num(v, m, s, k, best=v is not None and len(methods) > 1 and v == best.get((s, k))))
        body.append(f"<tr><th>{_e(m)}</th>{''.join(cells)}</tr>")
    return (f'<table class="{cls}"><thead><tr><th rowspan="2">method</th>{head1}</tr><tr>{head2}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _all_metrics_table(results: Mapping[str, Any]) -> str:
    present = [k for k in METRICS if any(k in r for r in results["rows"])]
    head = "".join(f"<th>{_e(k)}</th>" for k in present)
    body = []
    for r in results["rows"]:
        cells = "".join(_num(r.get(k), r["method"], r["ood"], k) for k in present)
        tt = " (test-time)" if r.get("test_time") else ""
        body.append(f"<tr><th>{_e(r['method'])}{tt}</th><td>{_e(r['ood'])}</td>{cells}</tr>")
    return (f'<table class="all-metrics"><thead><tr><th>method</th><th>OOD set</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


_DIAG_COLS = [("n_images", "images", 1.0), ("no_tag_fraction", "no tag %", 100.0), ("tokens_per_image", "tokens / image", 1.0),
              ("token_fraction", "tokens %", 100.0), ("mask_precision", "object precision %", 100.0),
              ("object_token_fraction", "at random %", 100.0), ("mask_recall", "object recall %", 100.0),
              ("mask_iou", "object IoU %", 100.0), ("mask_images", "mask images", 1.0),
              ("distractor_fraction", "on distractors %", 100.0)]


def _diagnostics_table(diag: Sequence[Mapping[str, Any]]) -> str:
    cols = [c for c in _DIAG_COLS if any(r.get(c[0]) is not None for r in diag)]
    head = "".join(f"<th>{_e(label)}</th>" for _, label, _ in cols)
    body = []
    for r in diag:
        cells = []
        for key, _, scale in cols:
            v = r.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and scale == 1.0:
                cells.append(f'<td class="num" data-method="{_e(r["method"])}" data-split="{_e(r["split"])}" '
                             f'data-metric="{_e(key)}" data-value="{v!r}">{v}</td>')
            else:
                cell = _num(v, r["method"], r["split"], key, scale)
                cells.append(cell.replace("data-ood=", "data-split=", 1))
        note = f'<td class="note">{_e(r["mask_note"])}</td>' if r.get("mask_note") else "<td></td>"
        body.append(f"<tr><th>{_e(r['method'])}</th><td>{_e(r['split'])}</td>{''.join(cells)}{note}</tr>")
    return (f'<table class="diagnostics"><thead><tr><th>method</th><th>split</th>{head}<th>note</th></tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def figure_order(paths: Iterable[Path]) -> list[Path]:
    """overview first, then the token pictures, then the per-method figures, each alphabetically."""
    def key(p: Path) -> tuple[int, str]:
        return (0 if p.stem == "overview" else 1 if p.stem.startswith("tokens-") else 2, p.name)
    return sorted(paths, key=key)


def _caption(p: Path) -> str:
    if p.stem == "overview":
        return "average AUROC and FPR95 of every method"
    if p.stem.startswith("tokens-"):
        return (f"{p.stem[len('tokens-'):]}: example images of the IND test set and each OOD set (lowest to highest score); "
                "orange: kept tokens, green: true object outline, dashed: the tagger's crop")
    return f"{p.stem}: score histograms (higher = more OOD) and ROC curves (IND positive)"


def render_html(results: Mapping[str, Any], figures: Sequence[str] = (), links: Sequence[str] = (),
                title: str | None = None) -> str:
    """The page as text. ``figures`` / ``links``: paths relative to the page (``plots/overview.png``)."""
    meta = results.get("meta") or {}
    title = title or f"{meta.get('benchmark', meta.get('source', 'tagood'))}: OOD detection"
    backbone = (meta.get("backbone") or {}).get("id")
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    facts = []
    if backbone:
        facts.append(f"backbone <b>{_e(backbone)}</b>")
    if results.get("id_accuracy") is not None:
        acc = float(results["id_accuracy"])
        facts.append(f'IND accuracy of the linear head <b data-metric="id_accuracy" data-value="{acc!r}">{acc:.2f}%</b>')
    t = (meta.get("timings") or {}).get("total_s")
    if t is not None:
        facts.append(f"run time {float(t):.0f} s")
    sizes = meta.get("sizes") or {}
    if sizes:
        facts.append("images: " + ", ".join(f"{_e(k)} {int(v)}" for k, v in sizes.items()))
    if facts:
        parts.append(f"<p>{' &middot; '.join(facts)}</p>")
    parts.append('<p class="note">Percent. Scores are OOD scores (higher = more OOD). FPR95 here: FPR of OOD at 95% TPR '
                 "of IND (IND positive; TagOOD / MCM papers). Bold: the best method per column.</p>")
    static, tt = row_methods(results, test_time=False), row_methods(results, test_time=True)
    parts.append("<h2>OOD detection</h2>")
    parts.append(_main_table(results, static, "results"))
    if tt:
        parts.append("<h2>Test-time methods</h2><p class=\"note\">Scored on one seeded stream of the IND test set and "
                     "the OOD sets (see results.json meta.streams); not comparable one to one with the static methods.</p>")
        parts.append(_main_table(results, tt, "results test-time"))
    warnings = meta.get("warnings") or []
    errors = meta.get("errors") or {}
    if warnings or errors:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f'<li class="warn">{_e(w)}</li>' for w in warnings)
                     + "".join(f'<li class="warn">{_e(k)} failed: {_e(v)}</li>' for k, v in errors.items()) + "</ul>")
    if results.get("diagnostics"):
        parts.append("<h2>Decomposition diagnostics</h2><p class=\"note\">What the tag-based methods keep of each image: "
                     "images without a kept IND tag, kept tokens, and where the benchmark knows the true object, the "
                     "share of kept tokens on it (precision; 'at random' = the object's share of all tokens), of the "
                     "object kept (recall) and their IoU.</p>")
        parts.append(_diagnostics_table(results["diagnostics"]))
    if figures:
        parts.append("<h2>Figures</h2>")
        for f in figures:
            p = Path(f)
            parts.append(f'<figure><img src="{_e(p.as_posix())}" alt="{_e(p.stem)}"><figcaption>{_e(_caption(p))}'
                         "</figcaption></figure>")
    parts.append("<h2>Every metric</h2><p class=\"note\">AUPR-In / AUPR-Out: average precision with IND / OOD "
                 "positive (the _trapz columns: trapezoid rule); fpr95_ood_pos: FPR of IND at 95% TPR of OOD "
                 "(OpenOOD v1.5).</p>")
    parts.append(_all_metrics_table(results))
    if links:
        parts.append("<h2>Files</h2><ul>" + "".join(f'<li><a href="{_e(Path(x).as_posix())}">{_e(x)}</a></li>' for x in links)
                     + "</ul>")
    versions = meta.get("versions") or {}
    if versions:
        parts.append('<p class="note">' + ", ".join(f"{_e(k)} {_e(v)}" for k, v in versions.items()) + "</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_html(results: Mapping[str, Any], out_dir: str | Path, title: str | None = None) -> Path:
    """``out_dir/results.html`` with every PNG under ``out_dir/plots`` and links to the run's files that exist
    (``results.json``, ``results.md``, ``results.csv``, ``run.log``, ``vocabulary-*.tsv``)."""
    from tagood.runtime.fileio import atomic_write_text

    out = Path(out_dir)
    plots = out / "plots"
    figures = [p.relative_to(out).as_posix() for p in figure_order(plots.glob("*.png"))] if plots.is_dir() else []
    names = ["results.json", "results.md", "results.csv", "scores.npz", "run.log"]
    links = [n for n in names if (out / n).is_file()] + sorted(p.name for p in out.glob("vocabulary-*.tsv"))
    path = out / "results.html"
    atomic_write_text(path, render_html(results, figures, links, title))
    return path
