"""The ``tagood`` command line (typer). Scores everywhere: higher = more OOD.

Every error of a command exits with status 2 and one message that names the file or option and
what to do; ``tagood --debug ...`` (or ``TAGOOD_DEBUG=1``) shows the traceback instead. Every command is
wrapped by :func:`tagood.cli.common.cli_command` (its opening: logging, device; its errors).
"""

from __future__ import annotations

import logging
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from tagood.cli.cache import cache_app
from tagood.cli.common import cli_command, console, error as _error, fail as _fail, set_debug

log = logging.getLogger("tagood.cli.main")
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="OOD detection with tagging and vision-language models (TagOOD, KR-NFT, baselines).")
convert_app = typer.Typer(no_args_is_help=True, help="Convert official checkpoints into tagood's compact format.")
app.add_typer(convert_app, name="convert")
app.add_typer(cache_app, name="cache")


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (also TAGOOD_DEBUG=1)."),
          threads: Optional[int] = typer.Option(None, "--threads", min=1, help=(
              "CPU threads for torch, onnxruntime and image decoding together (default: $TAGOOD_THREADS, "
              "$OMP_NUM_THREADS, else the CPUs this process may run on)."))) -> None:
    """OOD detection with tagging and vision-language models (TagOOD, KR-NFT, baselines)."""
    from tagood.runtime.alloc import keep_large_allocations
    from tagood.runtime.threads import configure

    set_debug(debug)
    configure(threads)  # before any command imports torch: sets its threads and OpenMP's passive wait policy
    keep_large_allocations()  # activations from the heap, not fresh zero-filled pages each batch (tagood.runtime.alloc)


_PICKLE_WEIGHTS = ("pytorch_model.bin", "model.bin", "pytorch_model.pt", "model.pt", "model.pth")


def _check_clip_dir(path: Optional[Path | str]) -> None:
    """A CLIP directory whose weights exist only as a pickle is refused before anything unpickles it."""
    if path is None or not Path(path).is_dir():
        return
    p = Path(path)
    if any(p.glob("*.safetensors")):
        return
    pickles = [f.name for f in p.iterdir() if f.name in _PICKLE_WEIGHTS or f.name.startswith("pytorch_model-")]
    if pickles:
        _fail(f"{p}: the CLIP weights are only in {', '.join(sorted(pickles))}, a pickle file, which can run code when it "
              "is loaded; tagood reads safetensors only. Convert it once on a trusted machine "
              "(CLIPModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)) to get model.safetensors")


def _check_detector_dir(d: Path) -> dict:
    """Check a `tagood fit` directory before loading it (:func:`tagood.pipeline.fitscore.check_detector_dir`: tagood.json
    against its schema with a finite threshold, every .safetensors header); exits 2 naming the file otherwise."""
    from tagood.pipeline.fitscore import check_detector_dir

    return check_detector_dir(d)  # DetectorFileError is a ValueError: cli_command prints it and exits 2


def _is_main() -> bool:
    """Rank 0 of a torchrun world (or a single process): the one that prints and writes the results."""
    from tagood.runtime.distributed import world

    return world().is_main


def _methods_opt(methods: Optional[str]) -> list[str] | None:
    """Split 'a,b[x=1,y=2],c' on the commas outside brackets."""
    from tagood.detectors.registry import split_specs

    return split_specs(methods) if methods else None


def _write_plots(results: dict, scores: dict, out: Path, ind: str = "test") -> None:
    from tagood.bench.report.plots import write_plots

    paths = write_plots(results, scores, out, ind)
    console.print(escape(f"wrote {len(paths)} figures to {out}"))


def _run_and_report(cfg, out: Path, cache: Optional[Path], device: str, methods: Optional[str], plots: bool = False) -> None:
    from tagood.bench import report
    from tagood.bench.runner import create_detector, run
    for spec in _methods_opt(methods) or cfg.methods:  # every method spec is checked before any extraction starts
        create_detector(spec, cfg)
    results, state = run(cfg, out_dir=out, cache_root=cache, device=device, methods=_methods_opt(methods))
    if not _is_main():  # under torchrun rank 0 reports and writes the run folder; the others only compute
        if state.errors:
            raise typer.Exit(1)
        return
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

        _write_plots(results, state.scores, out / "plots")
        grids = write_token_grids(state, out / "plots")
        if grids:
            console.print(escape(f"wrote {len(grids)} token pictures (what the tagger kept): "
                                 + ", ".join(str(p) for p in grids)))
    from tagood.bench.report.html import write_html

    console.print(escape(f"wrote {write_html(results, out)} (table, diagnostics"
                         + (", figures" if plots else "; add --plots for the figures") + ")"))
    if state.errors:
        for spec, err in state.errors.items():
            console.print(f"[red]{escape(spec)} failed: {escape(err)}[/]")
        raise typer.Exit(1)


def _backbone_files(checkpoint: Optional[Path], tags: Optional[Path], thresholds: Optional[Path], clip: Optional[Path],
                    vocabulary: Optional[Path]) -> dict[str, str]:
    """The backbone spec keys of the file options that were given."""
    given = {"checkpoint": checkpoint, "tag_list": tags, "thresholds": thresholds, "path": clip, "vocabulary": vocabulary}
    return {k: str(v) for k, v in given.items() if v is not None}


_CHECKPOINT_HELP = "ram: RAM / RAM++ .pth or a `tagood convert ram` folder."
_TAGS_HELP = "ram: ram_tag_list.txt (not needed for a converted folder)."
_THRESHOLDS_HELP = "ram: ram_tag_list_threshold.txt (per-tag thresholds)."
_CLIP_HELP = "clip: a Hugging Face CLIP directory."
_VOCAB_HELP = "clip: a text file of tag names, one per line (default: the 1000 ImageNet class names)."
_BackboneOpt = Annotated[str, typer.Option(help="The tagger: efficientnet-lite0 / efficientnet-lite2 (built in), ram or clip.")]
_CheckpointOpt = Annotated[Optional[Path], typer.Option(help=_CHECKPOINT_HELP)]
_TagsOpt = Annotated[Optional[Path], typer.Option(help=_TAGS_HELP)]
_ThresholdsOpt = Annotated[Optional[Path], typer.Option(help=_THRESHOLDS_HELP)]
_ClipOpt = Annotated[Optional[Path], typer.Option(help=_CLIP_HELP)]
_VocabOpt = Annotated[Optional[Path], typer.Option(help=_VOCAB_HELP)]
_DEVICE_HELP = ("torch device: cpu, cuda, cuda:0 or mps. Several GPUs or nodes: launch one process per GPU with "
                "torchrun and give --device cuda (each rank drives cuda:LOCAL_RANK)")
_STREAM_HELP = ("Stream the folder's tokens / tag maps from the cache shard by shard when loading them as float32 would "
                "exceed this many GiB (default 8; 0 = always; -1 = never).")


def _stream_limit(v: Optional[float]) -> Optional[float]:
    from tagood.cache import STREAM_ABOVE_GB

    return STREAM_ABOVE_GB if v is None else (None if v < 0 else v)


_STREAM_RATIO_HELP = ("Test-time methods (adaneg): IND:OOD ratio of their seeded test stream (IND count / OOD count; "
                      "the larger side is subsampled). Default: every IND test and OOD image.")


@app.command()
@cli_command()
def demo(
    benchmark: str = typer.Option("scenes", help="Built-in benchmark: scenes (default), fashion or fashion-clutter."),
    quick: bool = typer.Option(False, "--quick", help="A smaller subset (for CI)."),
    out: Path = typer.Option(Path("runs/demo"), help="Directory for results.json / results.md / results.csv."),
    cache: Optional[Path] = typer.Option(None, help="Feature cache directory (default $TAGOOD_CACHE or ~/.cache/tagood/features)."),
    device: str = typer.Option("cpu", help=_DEVICE_HELP),
    methods: Optional[str] = typer.Option(None, help="Comma-separated detector names (default: all of the benchmark)."),
    ablations: bool = typer.Option(False, "--ablations", help="Add TagOOD's ablation rows: tau sweep, test tokens, scores, GT tag, CS tau sweep."),
    plots: bool = typer.Option(False, "--plots", help="Also draw score histograms + ROC curves per method and, per tag-based "
                                                      "method, the kept tokens on example images (OUT/plots/*.png, shown in "
                                                      "OUT/results.html)."),
    backbone: str = typer.Option("efficientnet-lite0", help="The built-in tagger: efficientnet-lite0 or efficientnet-lite2 "
                                                             "(the vision-language methods run on Lite0 only: their offline dual encoder reads its features)."),
    stream_ratio: Optional[float] = typer.Option(None, help=_STREAM_RATIO_HELP),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also log DEBUG lines."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Log warnings and errors only, no progress bars "
                                                           "(run.log still records everything)."),
) -> None:
    """Run the embedded-default benchmark offline on real weights and real images, print the table, write the results."""
    from tagood.bench.config import TAGOOD_SWEEP, builtin

    if backbone not in ("efficientnet-lite0", "efficientnet-lite2"):
        _fail(f"--backbone {backbone!r}: tagood demo runs on the built-in taggers efficientnet-lite0 or efficientnet-lite2 "
              "(RAM / CLIP: `tagood bench`)")
    cfg = builtin(benchmark, quick=quick)
    cfg.backbone = {"name": backbone}
    if backbone != "efficientnet-lite0" and not methods:  # the offline dual encoder reads Lite0 features
        from tagood.bench.config import VLM

        cfg.methods = [m for m in cfg.methods if m not in VLM]
        console.print(f"[yellow]{backbone}: the vision-language methods are left out (their offline dual encoder reads "
                      "EfficientNet-Lite0 features; run them with the default backbone)[/]")
    if ablations:
        cfg.methods = cfg.methods + TAGOOD_SWEEP
    _set_stream_ratio(cfg, stream_ratio)
    _run_and_report(cfg, out, cache, device, methods, plots)


def _set_stream_ratio(cfg: Any, ratio: Optional[float]) -> None:
    if ratio is None:
        return
    if not ratio > 0 or ratio != ratio or ratio == float("inf"):
        _fail(f"--stream-ratio must be a positive finite number (IND count / OOD count), got {ratio}")
    cfg.options["stream_id_ood_ratio"] = float(ratio)


@app.command()
@cli_command()
def bench(
    config: Optional[str] = typer.Argument(None, help="A TOML benchmark config, or 'imagenet' (needs --root and a tagger). "
                                                      "Every key: `tagood bench --example-config` and the README's "
                                                      "'Benchmark config files'."),
    out: Path = typer.Option(Path("runs/bench"), help="Output directory."),
    cache: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    device: str = typer.Option("cpu", help=_DEVICE_HELP),
    methods: Optional[str] = typer.Option(None, help="Comma-separated detector names (overrides the config)."),
    root: Optional[Path] = typer.Option(None, help="imagenet: folder holding imagenet/ and the OOD sets."),
    tagger: str = typer.Option("ram", help="imagenet: ram or clip."),
    checkpoint: Optional[Path] = typer.Option(None, help="imagenet + ram: RAM .pth or a `tagood convert ram` folder."),
    tags: Optional[Path] = typer.Option(None, help="imagenet + ram: ram_tag_list.txt."),
    thresholds: Optional[Path] = typer.Option(None, help="imagenet + ram: ram_tag_list_threshold.txt."),
    clip: Optional[Path] = typer.Option(None, help="imagenet: a Hugging Face CLIP directory (the tagger with --tagger clip; "
                                                  "with --tagger ram the encoder of the vision-language methods)."),
    train_per_class: Optional[int] = typer.Option(None, help="imagenet: seeded subsample of the IND train images per class."),
    stream_above_gb: Optional[float] = typer.Option(
        None, help="Stream a split's tokens / tag maps shard by shard from the cache when loading them as float32 "
                   "would exceed this many GiB (default 8; 0 = always; -1 = never). TagOOD then trains from an "
                   "on-disk object-token store under the cache."),
    plots: bool = typer.Option(False, "--plots", help="Also draw score histograms + ROC curves per method and, per tag-based "
                                                      "method, the kept tokens on example images (OUT/plots/*.png, shown in "
                                                      "OUT/results.html)."),
    stream_ratio: Optional[float] = typer.Option(None, help=_STREAM_RATIO_HELP),
    example_config: bool = typer.Option(False, "--example-config", help="Print an annotated TOML config with every key "
                                                                       "and split type, then exit."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also log DEBUG lines."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Log warnings and errors only, no progress bars "
                                                           "(run.log still records everything)."),
) -> None:
    """Run a benchmark described by a config file, or the ImageNet benchmark with a RAM / CLIP tagger.

    Config keys and split types: `tagood bench --example-config` prints an annotated TOML with every key
    (save it, edit it, run it); the README's "Benchmark config files" section documents each one."""
    from tagood.bench.config import ConfigError, imagenet, load_config

    if example_config:
        from tagood.bench.example_config import example_config_text

        sys.stdout.write(example_config_text())
        return
    if config is None:
        _fail("tagood bench needs CONFIG: a TOML file (`tagood bench --example-config > bench.toml` prints one to "
              "start from) or 'imagenet'")
    _check_clip_dir(clip)
    if config == "imagenet":
        if root is None:
            raise ConfigError("`tagood bench imagenet` needs --root (see README 'Reproduce the TagOOD paper')")
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
            raise ConfigError("--tagger must be ram or clip")
        cfg = imagenet(root, spec, train_per_class, clip=clip)
    else:
        cfg = load_config(config)
    if stream_above_gb is not None:
        cfg.options["stream_above_gb"] = stream_above_gb
    _set_stream_ratio(cfg, stream_ratio)
    _run_and_report(cfg, out, cache, device, methods, plots)


def _rebuild_results(scores: Path, per: dict, ind: str) -> dict:
    """The results document recomputed from per-sample scores; when the run's ``results.json`` lies beside them,
    its diagnostics, warnings, group averages (``ood_groups``) and test-time marks are carried over."""
    import json

    from tagood.bench import report
    from tagood.bench.scores import rows_from_scores

    old_path = (scores if scores.is_dir() else scores.parent) / "results.json"
    old: dict = {}
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


def _compare(per: dict, pair: str, n_boot: int, level: float, seed: int, ind: str, out: Optional[Path]) -> None:
    """Print (and with ``out`` write ``comparison.json``) the paired bootstrap of two methods."""
    from rich.table import Table

    from tagood.bench.intervals import paired_difference
    from tagood.runtime.fileio import atomic_write_json

    names = _methods_opt(pair) or []
    if len(names) != 2:
        raise ValueError(f"--compare takes two methods 'A,B', got {pair!r}")
    missing = [m for m in names if m not in per]
    if missing:
        raise ValueError(f"no scores for {missing}; the file has {sorted(per)}")
    res = paired_difference(per[names[0]], per[names[1]], n_boot, level, seed, ind)
    t = Table(title=escape(f"{names[0]} minus {names[1]} (paired bootstrap, {n_boot} replicates, {100 * level:.0f}% intervals)"))
    for col in ("OOD set", "metric", names[0], names[1], "difference", "interval", "p"):
        t.add_column(escape(col), justify="left" if col in ("OOD set", "metric") else "right")
    for k, by_metric in res.items():
        for m in ("auroc", "fpr95"):
            d = by_metric[m]
            t.add_row(escape(k), m, f"{d['a']:.2f}", f"{d['b']:.2f}", f"{d['diff']:+.2f}", f"[{d['low']:+.2f}, {d['high']:+.2f}]",
                      f"{d['p']:.3f}" if d["p"] > 0 else f"<{1 / n_boot:.2g}")
    console.print(t)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "comparison.json", {"a": names[0], "b": names[1], "n_boot": n_boot, "level": level,
                                                    "seed": seed, "ind_split": ind, "sets": res})
        console.print(escape(f"wrote {out / 'comparison.json'}"))


@app.command("metrics")
@cli_command()
def metrics_cmd(
    scores: Path = typer.Argument(..., help="A run directory (holding scores.npz) or a scores .npz file."),
    out: Optional[Path] = typer.Option(None, help="Write results.json / .md / .csv here."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated methods to keep (default: all in the file)."),
    ind: str = typer.Option("test", help="The IND split's name in the file."),
    bootstrap: int = typer.Option(0, help="Add percentile-bootstrap intervals from this many replicates (e.g. 1000)."),
    level: float = typer.Option(0.95, help="Confidence level of the bootstrap intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap resampling."),
    plots: bool = typer.Option(False, "--plots", help="Also draw score histograms + ROC curves per method and an overview "
                                                      "(PNG files in OUT/plots, or RUN_DIR/plots without --out)."),
    compare: Optional[str] = typer.Option(None, help="'A,B': paired bootstrap of method A minus method B on the same samples "
                                                     "(difference, interval, p-value per OOD set; --bootstrap replicates, "
                                                     "1000 if not given)."),
) -> None:
    """Recompute the OOD metrics table from per-sample scores (higher = more OOD), without the models."""
    from tagood.bench import report
    from tagood.bench.scores import load_scores

    per, _ = load_scores(scores)
    if compare:
        _compare(per, compare, bootstrap or 1000, level, seed, ind, out)
        return
    keep = _methods_opt(methods)
    if keep:
        unknown = sorted(set(keep) - set(per))
        if unknown:
            raise ValueError(f"{scores}: no scores for {unknown}; the file has {sorted(per)}")
        per = {m: per[m] for m in keep}
    results = _rebuild_results(scores, per, ind)
    if bootstrap:
        from tagood.bench.intervals import add_intervals

        add_intervals(results, per, bootstrap, level, seed, ind)
    console.print(report.rich_table(results, title=escape(f"{scores}: OOD detection (percent)")))
    if out is not None:
        report.write_all(results, out, title=str(scores))
        console.print(escape(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.csv'}"))
    if plots:
        _write_plots(results, per, (out if out is not None else (scores if scores.is_dir() else scores.parent)) / "plots", ind)


@app.command("methods")
@cli_command()
def list_methods() -> None:
    """List the registered detectors and the inputs each needs."""
    from rich.table import Table

    from tagood import detectors

    t = Table(title="detectors (score: higher = more OOD)")
    t.add_column("name", style="bold")
    t.add_column("needs")
    t.add_column("description")
    for name in detectors.available():
        cls = detectors.get_class(name)
        needs = sorted(set(cls.requires) | set(cls.context_requires))
        t.add_row(escape(name), ", ".join(needs), escape(_description(cls.__doc__)))
    console.print(t)


def _description(doc: Optional[str]) -> str:
    """The first paragraph of a docstring as one line (whole sentences; ``x`` shown as `x`)."""
    first = re.split(r"\n\s*\n", (doc or "").strip(), maxsplit=1)[0]
    return " ".join(first.split()).replace("``", "`")


@app.command()
@cli_command()
def extract(
    root: Path = typer.Argument(..., help="Image folder (class subfolders) or, with --list, the root of the list's paths."),
    list_file: Optional[Path] = typer.Option(None, "--list", help="List file of 'path \\[label]' lines relative to ROOT."),
    split: str = typer.Option("images", help="Name of this split in the cache."),
    cache: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    backbone: _BackboneOpt = "efficientnet-lite0",
    checkpoint: _CheckpointOpt = None,
    tags: _TagsOpt = None,
    thresholds: _ThresholdsOpt = None,
    clip: _ClipOpt = None,
    vocabulary: _VocabOpt = None,
    fields: Optional[str] = typer.Option(None, help="Comma-separated fields to store (default: all the backbone gives)."),
    batch_size: int = typer.Option(64, min=1, help="Images per batch (per device with a device list)."),
    device: str = typer.Option("cpu", help=_DEVICE_HELP),
    commit_every: int = typer.Option(256, min=1, help="Commit a cache shard every this many images (a kill loses at most one shard)."),
    commit_seconds: float = typer.Option(30.0, min=0.1, help="... or every this many seconds, whichever comes first."),
    lock_timeout: Optional[float] = typer.Option(None, min=0, help="Seconds to wait for another process extracting the same "
                                                                   "entry (default: wait until it is done)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also log DEBUG lines."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Log warnings and errors only, no progress bars "
                                                           "(run.log still records everything)."),
) -> None:
    """Extract features of an image folder into the resumable feature cache (re-running does no work)."""
    from tagood import data
    from tagood.backbones.factory import build_backbone
    from tagood.extract import extract_split

    _check_clip_dir(clip)
    src = data.ListFileSource(list_file, root) if list_file else data.FolderSource(root)
    spec = {"name": backbone, **_backbone_files(checkpoint, tags, thresholds, clip, vocabulary)}
    bb = build_backbone(spec, device=device)
    from tagood.pipeline.fitscore import backbone_spec

    field_list = fields.split(",") if fields else None
    recipe = {"root": str(root.resolve()), "list": str(list_file.resolve()) if list_file else None, "split": split,
              "backbone": backbone_spec(spec), "fields": field_list, "batch_size": batch_size}
    reader = extract_split(src, bb, cache, split=split, fields=field_list, batch_size=batch_size, commit_rows=commit_every,
                           commit_seconds=commit_seconds, lock_timeout=lock_timeout, meta={"recipe": recipe})
    if not _is_main():  # under torchrun rank 0 reports
        return
    console.print(escape(f"{len(reader)} samples cached in {reader.dir}" + (f"; {len(reader.failed)} skipped (see manifest.json)" if reader.failed else "")))
    for f in reader.failed[:20]:
        console.print(f"[yellow]skipped {escape(f['ident'])}: {escape(f['reason'])}[/]")


@convert_app.command("ram")
@cli_command()
def convert_ram_cmd(
    checkpoint: Path = typer.Argument(..., help="Official RAM / RAM++ checkpoint (.pth, {'model': state_dict})."),
    out: Path = typer.Option(..., help="Output directory: model.safetensors + config.json + tags.txt (+ thresholds.txt)."),
    tags: Path = typer.Option(..., help="RAM tag list (ram_tag_list.txt)."),
    thresholds: Optional[Path] = typer.Option(None, help="Per-tag thresholds (ram_tag_list_threshold.txt)."),
    fp16: bool = typer.Option(False, "--fp16", help="Store weights in fp16 (half the size)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also log DEBUG lines."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Log warnings and errors only, no progress bars "
                                                           "(run.log still records everything)."),
) -> None:
    """Keep only the tagger's weights of an official RAM checkpoint (drops the text encoder/decoder)."""
    from tagood.backbones.ram import convert_ram

    d = convert_ram(checkpoint, out, tags, thresholds, fp16=fp16)
    size_in = checkpoint.stat().st_size
    size_out = sum(f.stat().st_size for f in Path(d).iterdir())
    console.print(escape(f"wrote {d}: {size_out / 2**20:.1f} MiB (from {size_in / 2**20:.1f} MiB); load it with backbone name 'ram', checkpoint = {d}"))


@app.command()
@cli_command(bad_input=(RuntimeError,))
def selftest(
    kind: str = typer.Argument(..., help="ram, clip or efficientnet."),
    checkpoint: Optional[Path] = typer.Option(None, help="ram: official .pth or a `tagood convert ram` folder; clip: a Hugging Face CLIP directory."),
    tags: Optional[Path] = typer.Option(None, help="ram: ram_tag_list.txt (not needed for a converted folder)."),
    thresholds: Optional[Path] = typer.Option(None, help="ram: ram_tag_list_threshold.txt."),
    arch: Optional[str] = typer.Option(None, help="clip: open_clip architecture when CHECKPOINT is an open_clip file."),
    device: str = typer.Option("cpu"),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also log DEBUG lines."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Log warnings and errors only, no progress bars "
                                                           "(run.log still records everything)."),
) -> None:
    """Check real weights after download: shapes, determinism, attention and zero-shot sense on two real photos."""
    from rich.table import Table

    from tagood.backbones import selftest as st

    if kind == "ram":
        from tagood.backbones.ram import load_ram

        if checkpoint is None:
            raise ValueError("selftest ram needs --checkpoint (and --tags unless it is a converted folder)")
        checks = st.selftest_tagger(load_ram(checkpoint, tags, thresholds, device=device))
    elif kind == "clip":
        from tagood.backbones.clip import load_clip

        if checkpoint is None:
            raise ValueError("selftest clip needs --checkpoint DIR (a Hugging Face CLIP directory or an open_clip file)")
        checks = st.selftest_dual_encoder(load_clip(checkpoint, arch=arch, device=device))
    elif kind == "efficientnet":
        from tagood.backbones.efficientnet import EfficientNetLite0

        checks = st.selftest_tagger(EfficientNetLite0(device=device))
    else:
        raise ValueError("selftest KIND must be ram, clip or efficientnet")
    t = Table(title=f"self-test: {kind}")
    for col in ("check", "result", "detail"):
        t.add_column(col)
    for c in checks:
        t.add_row(c.name, "[green]pass[/]" if c.passed else "[red]FAIL[/]", escape(c.detail))
    console.print(t)
    if not all(c.passed for c in checks):
        _error("self-test failed: the weights, tag list or preprocessing do not behave like the published model")
        raise typer.Exit(1)


@app.command()
@cli_command()
def fit(
    folder: Path = typer.Argument(..., help="IND training images, one sub-folder per class."),
    out: Path = typer.Option(..., help="Directory to save the fitted detector in."),
    method: str = typer.Option("tagood", help="tagood, cs, ce+cs or krnft, with options, e.g. 'tagood[tau=0.25,epochs=30]' (krnft: on CLIP with --backbone clip --clip DIR, else on the offline dual encoder)."),
    backbone: _BackboneOpt = "efficientnet-lite0",
    checkpoint: _CheckpointOpt = None,
    tags: _TagsOpt = None,
    thresholds: _ThresholdsOpt = None,
    clip: _ClipOpt = None,
    vocabulary: _VocabOpt = None,
    cache: Optional[Path] = typer.Option(None, help="Feature cache directory."),
    device: str = typer.Option("cpu", help=_DEVICE_HELP),
    seed: int = typer.Option(0),
    stream_above_gb: Optional[float] = typer.Option(None, help=_STREAM_HELP),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also log DEBUG lines."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Log warnings and errors only, no progress bars "
                                                           "(run.log still records everything)."),
) -> None:
    """Fit TagOOD (or KR-NFT) on a labelled image folder and save it (with a 95%-TPR threshold from held-out IND images)."""
    from tagood.pipeline.fitscore import fit_folder

    _check_clip_dir(clip)
    spec = {"name": backbone, **_backbone_files(checkpoint, tags, thresholds, clip, vocabulary)}
    meta = fit_folder(folder, out, method, spec, cache, device, seed, stream_above_gb=_stream_limit(stream_above_gb))
    if not _is_main():  # under torchrun rank 0 reports
        return
    tpr = meta.get("heldout_tpr")
    console.print(escape(f"saved {meta['method']} ({len(meta['classes'])} classes, {meta['n_train']} training images) to {out}; "
                         f"threshold {meta['threshold']:.4f}")
                  + (escape(f": accepts {100 * tpr:.1f}% of {meta.get('n_heldout', '?')} held-out IND images") if tpr is not None else ""))
    for w in meta.get("warnings") or []:
        console.print(f"[yellow]{escape(str(w))}[/]")
    for f in meta["failed_images"]:
        console.print(f"[yellow]skipped {escape(f['ident'])}: {escape(f['reason'])}[/]")


@app.command()
@cli_command()
def score(
    detector: Path = typer.Argument(..., help="A directory written by `tagood fit`."),
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders to score."),
    out: Path = typer.Option(Path("scores.csv"), help="CSV of path, score, is_ood."),
    checkpoint: Optional[Path] = typer.Option(None, help="Where the fit-time RAM checkpoint is now, if it moved."),
    tags: Optional[Path] = typer.Option(None, help="Where the fit-time RAM tag list is now, if it moved."),
    thresholds: Optional[Path] = typer.Option(None, help="Where the fit-time RAM thresholds are now, if they moved."),
    clip: Optional[Path] = typer.Option(None, help="Where the fit-time CLIP directory is now, if it moved."),
    vocabulary: Optional[Path] = typer.Option(None, help="Where the fit-time CLIP vocabulary is now, if it moved."),
    cache: Optional[Path] = typer.Option(None),
    device: str = typer.Option("cpu", help=_DEVICE_HELP),
    stream_above_gb: Optional[float] = typer.Option(None, help=_STREAM_HELP),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Also log DEBUG lines."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Log warnings and errors only, no progress bars "
                                                           "(run.log still records everything)."),
) -> None:
    """Score new images with a fitted detector (higher = more OOD); the tagger is the one it was fitted with."""
    from tagood.pipeline.fitscore import score_images

    saved_spec = _check_detector_dir(detector)["backbone"].get("spec") or {}
    _check_clip_dir(clip if clip is not None else (saved_spec.get("path") if isinstance(saved_spec, dict) else None))
    rows, failed = score_images(detector, list(inputs), out, cache, device,
                                backbone=_backbone_files(checkpoint, tags, thresholds, clip, vocabulary),
                                stream_above_gb=_stream_limit(stream_above_gb))
    if not _is_main():  # under torchrun rank 0 reports
        return
    bad = [r["path"] for r in rows if not math.isfinite(r["score"])]
    if bad:
        _fail(f"the detector in {detector} gave non-finite scores for {len(bad)} of {len(rows)} images (e.g. {bad[0]}); "
              "its weights may be damaged: re-run `tagood fit`")
    n_ood = sum(r["is_ood"] for r in rows)
    console.print(escape(f"scored {len(rows)} images: {n_ood} flagged OOD; wrote {out}"))
    for f in failed:
        console.print(f"[yellow]skipped {escape(f['ident'])}: {escape(f['reason'])}[/]")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
