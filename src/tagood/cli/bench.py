"""``tagood demo``, ``tagood bench CONFIG`` and ``tagood bench imagenet``: run a benchmark, print its table, write the
run folder (results.json / .md / .csv / .html, scores.npz, run.log). Scores everywhere: higher = more OOD.

``tagood bench`` is a group whose default command takes a TOML config (``tagood bench bench.toml``); ``imagenet`` is
its own command with the ImageNet options (``tagood bench imagenet --root DATA --tagger ram ...``).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from tagood.cli.common import cli_command, console, fail, is_main, method_specs
from tagood.cli.options import (
    METHODS_HELP,
    BenchStreamAboveOpt,
    CacheOpt,
    DeviceOpt,
    PlotsOpt,
    QuietOpt,
    StreamRatioOpt,
    VerboseOpt,
)
from tagood.errors import ConfigError

#: the name of ``tagood bench``'s default command (the config file one); hidden in the listings
DEFAULT = "run"


class BenchGroup(TyperGroup):
    """``tagood bench``: its first argument names a sub-command (``imagenet``) or else is the CONFIG of the default
    command, so ``tagood bench bench.toml --methods msp`` and ``tagood bench --help`` reach the config command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # typer's bundled click Context
        if not args or args[0] not in self.commands:
            args = [DEFAULT, *args]
        return super().parse_args(ctx, args)


class DefaultCommand(TyperCommand):
    """The default command of :class:`BenchGroup`, shown (usage, errors) as ``tagood bench``, not ``tagood bench run``."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        if parent is not None and info_name == DEFAULT:
            info_name, parent = parent.info_name, parent.parent
        return super().make_context(info_name, args, parent=parent, **extra)


bench_app = typer.Typer(cls=BenchGroup, no_args_is_help=False, help=(
    "Run a benchmark described by a TOML config (`tagood bench CONFIG`), or the ImageNet benchmark with a RAM / CLIP "
    "tagger (`tagood bench imagenet --help`)."))

OutOpt = Annotated[Path, typer.Option("--out", help="Output directory of the run (results.json / .md / .csv / .html, "
                                                    "scores.npz, run.log).")]


def write_plots(results: dict[str, Any], scores: dict[str, Any], out: Path, ind: str = "test") -> None:
    """Score histograms + ROC curves per method and an overview, as PNG files in ``out``."""
    from tagood.bench.report.plots import write_plots as _write

    paths = _write(results, scores, out, ind)
    console.print(escape(f"wrote {len(paths)} figures to {out}"))


def run_and_report(cfg: Any, out: Path, cache: Path | None, device: str, methods: str | None,
                   plots: bool = False) -> None:
    """Check every method spec, run the benchmark, print its table and write the run folder (rank 0 of torchrun)."""
    from tagood.bench.report import writers as report
    from tagood.bench.runner import create_detector

    specs = method_specs(methods)
    for spec in specs or cfg.methods:  # every method spec is checked before any extraction starts
        create_detector(spec, cfg)
    # the whole run folder (results, scores, log, figures, HTML) is written into a fresh folder and swapped in for
    # --out at the end, so --out never mixes two runs (issue 23); rank 0 of torchrun alone writes it
    with report.run_folder(out) if is_main() else contextlib.nullcontext(out) as stage:
        failed_specs = _run_into(cfg, stage, out, cache, device, specs, plots)
    if failed_specs:
        raise typer.Exit(1)


def _run_into(cfg: Any, stage: Path, out: Path, cache: Path | None, device: str, specs: list[str] | None,
              plots: bool) -> bool:
    """Run the benchmark writing the run folder into ``stage`` (named ``out`` in messages); True when a method
    failed (the run's other results are kept)."""
    from tagood.bench.report import writers as report
    from tagood.bench.runner import run

    results, state = run(cfg, out_dir=stage, cache_root=cache, device=device, methods=specs)
    if not is_main():  # under torchrun rank 0 reports and writes the run folder; the others only compute
        return bool(state.errors)
    console.print(report.rich_table(results, title=escape(f"{cfg.name}: OOD detection (percent; higher = more OOD scores)")))
    if results["id_accuracy"] is not None:
        console.print(f"IND accuracy of the linear head: [bold]{results['id_accuracy']:.2f}%[/]")
    failed = results["meta"]["failed_images"]
    for split, items in failed.items():
        console.print(f"[yellow]{split}: {len(items)} image(s) could not be decoded and were skipped[/]: "
                      + ", ".join(escape(f["ident"]) for f in items[:5]) + (" ..." if len(items) > 5 else ""))
    console.print(escape(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.csv'}, {out / 'scores.npz'}, "
                         f"{out / 'run.log'} in {results['meta']['timings']['total_s']:.0f}s"))
    if plots:
        from tagood.bench.report.overlays import write_token_grids
        from tagood.bench.report.plots import write_plots as _write_plots

        figures = _write_plots(results, state.scores, stage / "plots")
        console.print(escape(f"wrote {len(figures)} figures to {out / 'plots'}"))
        grids = write_token_grids(state, stage / "plots")
        if grids:
            console.print(escape(f"wrote {len(grids)} token pictures (what the tagger kept): "
                                 + ", ".join(str(out / "plots" / p.name) for p in grids)))
    from tagood.bench.report.html import write_html

    write_html(results, stage)
    console.print(escape(f"wrote {out / 'results.html'} (table, diagnostics"
                         + (", figures" if plots else "; add --plots for the figures") + ")"))
    for spec, err in state.errors.items():
        console.print(f"[red]{escape(spec)} failed: {escape(err)}[/]")
    return bool(state.errors)


def _set_stream_ratio(cfg: Any, ratio: float | None) -> None:
    if ratio is None:
        return
    if not ratio > 0 or ratio != ratio or ratio == float("inf"):
        raise ConfigError(f"--stream-ratio must be a positive finite number (IND count / OOD count), got {ratio}")
    cfg.options.stream_id_ood_ratio = float(ratio)


def _set_options(cfg: Any, stream_above_gb: float | None, stream_ratio: float | None) -> None:
    if stream_above_gb is not None:
        from pydantic import ValidationError

        try:
            cfg.options.stream_above_gb = stream_above_gb
        except ValidationError as e:
            msg = e.errors()[0].get("msg", "invalid value") if e.errors() else "invalid value"
            raise ConfigError(f"--stream-above-gb {stream_above_gb}: {msg}") from None
    _set_stream_ratio(cfg, stream_ratio)


@cli_command()
def demo(
    benchmark: Annotated[str, typer.Option(help="Built-in benchmark: scenes (default), fashion or fashion-clutter.")] = "scenes",
    quick: Annotated[bool, typer.Option("--quick", help="A smaller subset (for CI).")] = False,
    out: Annotated[Path, typer.Option(help="Directory for results.json / results.md / results.csv.")] = Path("runs/demo"),
    cache: CacheOpt = None,
    device: DeviceOpt = "cpu",
    methods: Annotated[str | None, typer.Option(help=METHODS_HELP + "; default: all of the benchmark.")] = None,
    ablations: Annotated[bool, typer.Option("--ablations", help="Add TagOOD's ablation rows: tau sweep, test tokens, "
                                                                "scores, GT tag, CS tau sweep.")] = False,
    plots: PlotsOpt = False,
    backbone: Annotated[str, typer.Option(help="The built-in tagger: efficientnet-lite0 or efficientnet-lite2 (the "
                                               "vision-language methods run on Lite0 only: their offline dual encoder "
                                               "reads its features).")] = "efficientnet-lite0",
    stream_ratio: StreamRatioOpt = None,
    ladder: Annotated[bool, typer.Option("--ladder", help="Run the decomposition ladder instead (scenes: image level, "
                                                          "tokens, object crops, oracle rungs; tagood.bench.ladder); "
                                                          "writes ladder.json / ladder.md too.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the embedded-default benchmark offline on real weights and real images, print the table, write the results."""
    from tagood.bench.config import TAGOOD_SWEEP, builtin
    from tagood.bench.schema import EfficientNetSpec

    if backbone not in ("efficientnet-lite0", "efficientnet-lite2"):
        fail(f"--backbone {backbone!r}: tagood demo runs on the built-in taggers efficientnet-lite0 or efficientnet-lite2 "
             "(RAM / CLIP: `tagood bench`)")
    cfg = builtin(benchmark, quick=quick)
    cfg.backbone = EfficientNetSpec.model_validate({"name": backbone})
    if ladder:
        from tagood.bench.ladder import ladder_markdown, run_ladder

        console.print(ladder_markdown(run_ladder(cfg, out, cache, device)), markup=False)
        return
    if backbone != "efficientnet-lite0" and not methods:  # the offline dual encoder reads Lite0 features
        from tagood.bench.config import VLM

        cfg.methods = [m for m in cfg.methods if m not in VLM]
        console.print(f"[yellow]{backbone}: the vision-language methods are left out (their offline dual encoder reads "
                      "EfficientNet-Lite0 features; run them with the default backbone)[/]")
    if ablations:
        cfg.methods = cfg.methods + TAGOOD_SWEEP
    _set_stream_ratio(cfg, stream_ratio)
    run_and_report(cfg, out, cache, device, methods, plots)


@bench_app.command(DEFAULT, cls=DefaultCommand, hidden=True)
@cli_command()
def bench_config(
    config: Annotated[str | None, typer.Argument(help="A TOML benchmark config. Every key: `tagood bench "
                                                         "--example-config` and docs/guides/bench-config.md.")] = None,
    out: OutOpt = Path("runs/bench"),
    cache: CacheOpt = None,
    device: DeviceOpt = "cpu",
    methods: Annotated[str | None, typer.Option(help=METHODS_HELP + "; default: the config's methods.")] = None,
    stream_above_gb: BenchStreamAboveOpt = None,
    plots: PlotsOpt = False,
    stream_ratio: StreamRatioOpt = None,
    example_config: Annotated[bool, typer.Option("--example-config", help="Print an annotated TOML config with every "
                                                                          "key and split type, then exit.")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run a benchmark described by a TOML config file, print the table and write the run folder.

    Config keys and split types: `tagood bench --example-config` prints an annotated TOML with every key
    (save it, edit it, run it); docs/guides/bench-config.md documents each one.
    The ImageNet benchmark with a RAM / CLIP tagger has its own command: `tagood bench imagenet --help`."""
    from tagood.bench.config import load_config

    if example_config:
        from tagood.bench.example_config import example_config_text

        sys.stdout.write(example_config_text())
        return
    if config is None:
        raise ConfigError("tagood bench needs CONFIG: a TOML file (`tagood bench --example-config > bench.toml` prints "
                          "one to start from), or run `tagood bench imagenet --root DATA ...`")
    cfg = load_config(config)
    _set_options(cfg, stream_above_gb, stream_ratio)
    run_and_report(cfg, out, cache, device, methods, plots)


@bench_app.command("imagenet")
@cli_command()
def bench_imagenet(
    root: Annotated[Path, typer.Option(help="Folder holding imagenet/ and the OOD sets (docs/guides/imagenet.md).")],
    tagger: Annotated[str, typer.Option(help="The tagger: ram or clip.")] = "ram",
    checkpoint: Annotated[Path | None, typer.Option(help="ram: RAM .pth or a `tagood convert ram` folder.")] = None,
    tags: Annotated[Path | None, typer.Option(help="ram: ram_tag_list.txt (not needed for a converted folder).")] = None,
    thresholds: Annotated[Path | None, typer.Option(help="ram: ram_tag_list_threshold.txt.")] = None,
    clip: Annotated[Path | None, typer.Option(help="A Hugging Face CLIP directory: the tagger with --tagger clip; with "
                                                      "--tagger ram the encoder of the vision-language methods.")] = None,
    train_per_class: Annotated[int | None, typer.Option(min=1, help="Seeded subsample of the IND train images per "
                                                                       "class (default: all).")] = None,
    out: OutOpt = Path("runs/bench"),
    cache: CacheOpt = None,
    device: DeviceOpt = "cpu",
    methods: Annotated[str | None, typer.Option(help=METHODS_HELP + "; default: the paper's methods.")] = None,
    stream_above_gb: BenchStreamAboveOpt = None,
    plots: PlotsOpt = False,
    stream_ratio: StreamRatioOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the TagOOD paper's ImageNet benchmark (IND ImageNet-1K; the OOD sets found under --root) with a RAM or CLIP
    tagger; the vision-language methods join when a CLIP is given."""
    from tagood.bench.config import imagenet
    from tagood.cli.common import check_clip_dir

    check_clip_dir(clip)
    if tagger == "ram":
        if checkpoint is None:
            raise ConfigError("--tagger ram needs --checkpoint (and --tags unless it is a converted folder)")
        spec = {"name": "ram", "checkpoint": str(checkpoint), **({"tag_list": str(tags)} if tags else {}),
                **({"thresholds": str(thresholds)} if thresholds else {})}
    elif tagger == "clip":
        if clip is None:
            raise ConfigError("--tagger clip needs --clip DIR (a Hugging Face CLIP directory)")
        spec = {"name": "clip", "path": str(clip)}
    else:
        raise ConfigError(f"--tagger must be ram or clip, got {tagger!r}")
    cfg = imagenet(root, spec, train_per_class, clip=clip)
    _set_options(cfg, stream_above_gb, stream_ratio)
    run_and_report(cfg, out, cache, device, methods, plots)
