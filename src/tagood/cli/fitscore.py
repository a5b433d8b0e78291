"""``tagood fit`` and ``tagood score``: fit a detector on a labelled image folder and save it with a decision threshold,
then score new images with it (:mod:`tagood.pipeline.fitscore`). Scores: higher = more OOD."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tagood.cli.common import (
    backbone_files,
    check_clip_dir,
    cli_command,
    console,
    fail,
    is_main,
    method_specs,
    stream_limit,
)
from tagood.cli.options import (
    BackboneOpt,
    CacheOpt,
    CheckpointOpt,
    ClipOpt,
    DeviceOpt,
    QuietOpt,
    SkipEmptyOpt,
    StreamAboveOpt,
    TagsOpt,
    ThresholdsOpt,
    VerboseOpt,
    VocabOpt,
)
from tagood.errors import ConfigError

log = logging.getLogger(__name__)

#: ``--skip-empty-classes`` of `tagood fit` / `tagood extract`
def _one_method(methods: str | None, method: str | None) -> str:
    """The one method spec of ``--methods`` (or of the deprecated ``--method``)."""
    if method is not None:
        if methods is not None:
            raise ConfigError("give --methods only (--method is its deprecated old name)")
        log.warning("--method is deprecated: use --methods %s", method)
        methods = method
    specs = method_specs(methods or "tagood") or []
    if len(specs) != 1:
        raise ConfigError(f"`tagood fit` fits and saves one detector; --methods names {len(specs)} ({', '.join(specs)}): "
                          "run it once per method, each with its own --out")
    return specs[0]


@cli_command()
def fit(
    folder: Annotated[Path, typer.Argument(help="IND training images, one sub-folder per class.")],
    out: Annotated[Path, typer.Option(help="Directory to save the fitted detector in.")],
    methods: Annotated[str | None, typer.Option(help=(
        "The detector to fit and save, with options, e.g. 'knn\\[k=10]' or 'tagood\\[tau=0.25,epochs=30]' (default "
        "tagood; `tagood methods` lists them; test-time methods such as adaneg cannot be saved). Vision-language "
        "methods (krnft, mcm, ...) run on CLIP with --backbone clip --clip DIR, else on the offline dual encoder."))] = None,
    method: Annotated[str | None, typer.Option(hidden=True, help="Deprecated old name of --methods.")] = None,
    backbone: BackboneOpt = "efficientnet-lite0",
    checkpoint: CheckpointOpt = None,
    tags: TagsOpt = None,
    thresholds: ThresholdsOpt = None,
    clip: ClipOpt = None,
    vocabulary: VocabOpt = None,
    cache: CacheOpt = None,
    device: DeviceOpt = "cpu",
    seed: Annotated[int, typer.Option(help="Seed of the held-out split (10% of the images, for the threshold) and of "
                                           "the detector's own randomness.")] = 0,
    stream_above_gb: StreamAboveOpt = None,
    skip_empty_classes: SkipEmptyOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit a detector on a labelled image folder and save it, with a 95%-TPR threshold from held-out IND images."""
    from tagood.pipeline.fitscore import fit_folder
    from tagood.runtime.fileio import check_output_dir

    check_output_dir(out)  # a file, device or FIFO is refused before any work (issue 23)
    spec_text = _one_method(methods, method)
    check_clip_dir(clip)
    spec = {"name": backbone, **backbone_files(checkpoint, tags, thresholds, clip, vocabulary)}
    meta = fit_folder(folder, out, spec_text, spec, cache, device, seed, stream_above_gb=stream_limit(stream_above_gb),
                      skip_empty_classes=skip_empty_classes)
    if not is_main():  # under torchrun rank 0 reports
        return
    tpr = meta.get("heldout_tpr")
    console.print(escape(f"saved {meta['method']} ({len(meta['classes'])} classes, {meta['n_train']} training images) to "
                         f"{out}; threshold {meta['threshold']:.4f}")
                  + (escape(f": accepts {100 * tpr:.1f}% of {meta.get('n_heldout', '?')} held-out IND images")
                     if tpr is not None else ""))
    for w in meta.get("warnings") or []:
        console.print(f"[yellow]{escape(str(w))}[/]")
    for f in meta["failed_images"]:
        console.print(f"[yellow]skipped {escape(f['ident'])}: {escape(f['reason'])}[/]")


@cli_command()
def score(
    detector: Annotated[Path, typer.Argument(help="A directory written by `tagood fit`.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders to score.")],
    out: Annotated[Path, typer.Option(help="CSV of path, score, is_ood.")] = Path("scores.csv"),
    checkpoint: Annotated[Path | None, typer.Option(help="Where the fit-time RAM checkpoint is now, if it moved.")] = None,
    tags: Annotated[Path | None, typer.Option(help="Where the fit-time RAM tag list is now, if it moved.")] = None,
    thresholds: Annotated[Path | None, typer.Option(help="Where the fit-time RAM thresholds are now, if they "
                                                            "moved.")] = None,
    clip: Annotated[Path | None, typer.Option(help="Where the fit-time CLIP directory is now, if it moved.")] = None,
    vocabulary: Annotated[Path | None, typer.Option(help="Where the fit-time CLIP vocabulary is now, if it "
                                                            "moved.")] = None,
    cache: CacheOpt = None,
    device: DeviceOpt = "cpu",
    stream_above_gb: StreamAboveOpt = None,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score new images with a fitted detector (higher = more OOD); the tagger is the one it was fitted with."""
    from tagood.pipeline.fitscore import check_detector_dir, score_images
    from tagood.runtime.fileio import check_output_file

    check_output_file(out)  # a device, FIFO or folder is refused before any work (issue 23)
    saved_spec = check_detector_dir(detector)["backbone"].get("spec") or {}
    check_clip_dir(clip if clip is not None else (saved_spec.get("path") if isinstance(saved_spec, dict) else None))
    rows, failed = score_images(detector, list(inputs), out, cache, device,
                                backbone=backbone_files(checkpoint, tags, thresholds, clip, vocabulary),
                                stream_above_gb=stream_limit(stream_above_gb))
    if not is_main():  # under torchrun rank 0 reports
        return
    bad = [r["path"] for r in rows if not math.isfinite(r["score"])]
    if bad:
        fail(f"the detector in {detector} gave non-finite scores for {len(bad)} of {len(rows)} images (e.g. {bad[0]}); "
             "its weights may be damaged: re-run `tagood fit`")
    n_ood = sum(r["is_ood"] for r in rows)
    console.print(escape(f"scored {len(rows)} images: {n_ood} flagged OOD; wrote {out}"))
    for f in failed:
        console.print(f"[yellow]skipped {escape(f['ident'])}: {escape(f['reason'])}[/]")
