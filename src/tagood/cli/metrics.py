"""``tagood metrics``: the OOD metrics table recomputed from a run's per-sample scores (no model is loaded), with
bootstrap intervals, figures, or the paired comparison of two methods (:func:`tagood.bench.compare.compare`).
Scores: higher = more OOD."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from tagood.cli.bench import write_plots
from tagood.cli.common import cli_command, console, method_specs
from tagood.errors import ConfigError, InputError

log = logging.getLogger(__name__)


def _rebuild_results(scores: Path, per: dict[str, Any], ind: str) -> dict[str, Any]:
    """The results document recomputed from per-sample scores; when the run's ``results.json`` lies beside them,
    its diagnostics, warnings, group averages (``ood_groups``) and test-time marks are carried over."""
    from tagood.bench.report import writers as report
    from tagood.bench.scores import rows_from_scores

    old_path = (scores if scores.is_dir() else scores.parent) / "results.json"
    old: dict[str, Any] = {}
    if old_path.is_file():
        try:
            old = json.loads(old_path.read_text())
        except (OSError, ValueError):
            log.warning("%s is not readable JSON; recomputing without its diagnostics", old_path)
    old_meta = old.get("meta") or {}
    test_time = {r["method"] for r in old.get("rows", []) if r.get("test_time")}
    rows = [{**r, "test_time": True} if r["method"] in test_time else r for r in rows_from_scores(per, ind)]
    meta = {"source": str(scores), "ind_split": ind,
            **{k: old_meta[k] for k in ("warnings", "streams") if old_meta.get(k)}}
    groups = ((old_meta.get("config") or {}).get("options") or {}).get("ood_groups")
    return report.build_results(rows, None, meta, old.get("diagnostics"), groups)


def _compare(per: dict[str, Any], pair: str, n_boot: int, level: float, seed: int, ind: str, out: Path | None) -> None:
    """Print (and with ``out`` write ``comparison.json``) the paired bootstrap of two methods."""
    from rich.table import Table

    from tagood.bench.compare import compare
    from tagood.runtime.fileio import atomic_write_json

    names = method_specs(pair) or []
    if len(names) != 2:
        raise ConfigError(f"--compare takes two methods 'A,B', got {pair!r}")
    res = compare(per, names[0], names[1], n_boot=n_boot, level=level, seed=seed, ind=ind)
    t = Table(title=escape(f"{res.a} minus {res.b} (paired bootstrap, {n_boot} replicates, {100 * level:.0f}% intervals)"))
    for col in ("OOD set", "metric", res.a, res.b, "difference", "interval", "p"):
        t.add_column(escape(col), justify="left" if col in ("OOD set", "metric") else "right")
    for k, by_metric in res.sets.items():
        for m in ("auroc", "fpr95"):
            d = by_metric[m]
            t.add_row(escape(k), m, f"{d.a:.2f}", f"{d.b:.2f}", f"{d.diff:+.2f}", f"[{d.low:+.2f}, {d.high:+.2f}]",
                      f"{d.p:.3f}" if d.p > 0 else f"<{1 / n_boot:.2g}")
    console.print(t)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "comparison.json", res.to_dict())
        console.print(escape(f"wrote {out / 'comparison.json'}"))


@cli_command()
def metrics(
    scores: Annotated[Path, typer.Argument(help="A run directory (holding scores.npz) or a scores .npz file.")],
    out: Annotated[Path | None, typer.Option(help="Write results.json / .md / .csv here.")] = None,
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods to keep (default: all in the file).")] = None,
    ind: Annotated[str, typer.Option(help="The IND split's name in the file.")] = "test",
    bootstrap: Annotated[int, typer.Option(help="Add percentile-bootstrap intervals from this many replicates "
                                                "(e.g. 1000).")] = 0,
    level: Annotated[float, typer.Option(help="Confidence level of the bootstrap intervals.")] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    plots: Annotated[bool, typer.Option("--plots", help="Also draw score histograms + ROC curves per method and an "
                                                        "overview (PNG files in OUT/plots, or RUN_DIR/plots without "
                                                        "--out).")] = False,
    compare: Annotated[str | None, typer.Option(help="'A,B': paired bootstrap of method A minus method B on the same "
                                                        "samples (difference, interval, p-value per OOD set; --bootstrap "
                                                        "replicates, 1000 if not given).")] = None,
) -> None:
    """Recompute the OOD metrics table from per-sample scores (higher = more OOD), without the models."""
    from tagood.bench.report import writers as report
    from tagood.bench.scores import load_scores
    from tagood.runtime.fileio import check_output_dir

    if out is not None:
        check_output_dir(out)  # a file, device or FIFO is refused before any work
    per, _ = load_scores(scores)
    if compare:
        _compare(per, compare, bootstrap or 1000, level, seed, ind, out)
        return
    keep = method_specs(methods)
    if keep:
        unknown = sorted(set(keep) - set(per))
        if unknown:
            raise ConfigError(f"{scores}: no scores for {unknown}; the file has {sorted(per)}")
        per = {m: per[m] for m in keep}
    try:
        results = _rebuild_results(scores, per, ind)
    except InputError as e:  # no IND split, or no OOD split: name the file
        raise InputError(f"{scores}: {e}") from None
    if bootstrap:
        from tagood.bench.intervals import add_intervals

        add_intervals(results, per, bootstrap, level, seed, ind)
    console.print(report.rich_table(results, title=escape(f"{scores}: OOD detection (percent)")))
    if out is not None:
        report.write_all(results, out, title=str(scores))
        console.print(escape(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.csv'}"))
    if plots:
        write_plots(results, per, (out if out is not None else (scores if scores.is_dir() else scores.parent)) / "plots", ind)
