"""``tagood extract``: extract an image folder's features into the resumable feature cache (:mod:`tagood.cache`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tagood.cli.common import backbone_files, check_clip_dir, cli_command, console, is_main
from tagood.cli.options import (
    BackboneOpt,
    CacheOpt,
    CheckpointOpt,
    ClipOpt,
    DeviceOpt,
    QuietOpt,
    SkipEmptyOpt,
    TagsOpt,
    ThresholdsOpt,
    VerboseOpt,
    VocabOpt,
)


@cli_command()
def extract(
    root: Annotated[Path, typer.Argument(help="Image folder (class subfolders) or, with --list, the root of the list's "
                                              "paths.")],
    list_file: Annotated[Path | None, typer.Option("--list", help="List file of 'path \\[label]' lines relative to "
                                                                     "ROOT.")] = None,
    split: Annotated[str, typer.Option(help="Name of this split in the cache.")] = "images",
    cache: CacheOpt = None,
    backbone: BackboneOpt = "efficientnet-lite0",
    checkpoint: CheckpointOpt = None,
    tags: TagsOpt = None,
    thresholds: ThresholdsOpt = None,
    clip: ClipOpt = None,
    vocabulary: VocabOpt = None,
    fields: Annotated[str | None, typer.Option(help="Comma-separated fields to store (default: all the backbone "
                                                       "gives).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 64,
    device: DeviceOpt = "cpu",
    commit_every: Annotated[int, typer.Option(min=1, help="Commit a cache shard every this many images (a kill loses at "
                                                          "most one shard).")] = 256,
    commit_seconds: Annotated[float, typer.Option(min=0.1, help="... or every this many seconds, whichever comes "
                                                                "first (the first shard after at most 3 s), so a kill "
                                                                "loses at most this much work.")] = 10.0,
    lock_timeout: Annotated[float | None, typer.Option(min=0, help="Seconds to wait for another process extracting "
                                                                      "the same entry (default: wait until it is "
                                                                      "done).")] = None,
    skip_empty_classes: SkipEmptyOpt = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Extract features of an image folder into the resumable feature cache (re-running does no work)."""
    from tagood import data
    from tagood.backbones.factory import build_backbone
    from tagood.extract import extract_split
    from tagood.pipeline.fitscore import backbone_spec

    check_clip_dir(clip)
    src = (data.ListFileSource(list_file, root) if list_file
           else data.FolderSource(root, skip_empty_classes=skip_empty_classes))
    spec = {"name": backbone, **backbone_files(checkpoint, tags, thresholds, clip, vocabulary)}
    bb = build_backbone(spec, device=device)
    field_list = fields.split(",") if fields else None
    recipe = {"root": str(root.resolve()), "list": str(list_file.resolve()) if list_file else None, "split": split,
              "backbone": backbone_spec(spec), "fields": field_list, "batch_size": batch_size,
              **({"skip_empty_classes": True} if skip_empty_classes else {})}
    reader = extract_split(src, bb, cache, split=split, fields=field_list, batch_size=batch_size, commit_rows=commit_every,
                           commit_seconds=commit_seconds, lock_timeout=lock_timeout, meta={"recipe": recipe})
    if not is_main():  # under torchrun rank 0 reports
        return
    console.print(escape(f"{len(reader)} samples cached in {reader.dir}"
                         + (f"; {len(reader.failed)} skipped (see manifest.json)" if reader.failed else "")))
    for f in reader.failed[:20]:
        console.print(f"[yellow]skipped {escape(f['ident'])}: {escape(f['reason'])}[/]")
