"""The options several ``tagood`` commands share, declared once: their names, types and help text.

Every command's ``--cache`` reads :data:`CACHE_HELP` (the one description of the default cache), every
``--device`` :data:`DEVICE_HELP`, and so on; ``tests/test_cli_help.py`` checks that every option of every
command has a help text. Scores everywhere: higher = more OOD.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

#: the one description of the default feature cache (:func:`tagood.backbones.home.default_cache_root`)
CACHE_HELP = ("Feature cache directory (default: $TAGOOD_CACHE, else $TAGOOD_HOME/features, "
              "else ~/.cache/tagood/features).")
DEVICE_HELP = ("torch device: cpu, cuda, cuda:0 or mps. Several GPUs or nodes: launch one process per GPU with "
               "torchrun and give --device cuda (each rank drives cuda:LOCAL_RANK).")
STREAM_HELP = ("Stream the tokens / tag maps of a split from the cache shard by shard when loading them as float32 "
               "would exceed this many GiB (default 8; 0 = always; -1 = never).")
BENCH_STREAM_HELP = STREAM_HELP + " TagOOD then trains from an on-disk object-token store under the cache."
STREAM_RATIO_HELP = ("Test-time methods (adaneg): IND:OOD ratio of their seeded test stream (IND count / OOD count; "
                     "the larger side is subsampled). Default: every IND test and OOD image.")
PLOTS_HELP = ("Also draw score histograms + ROC curves per method and, per tag-based method, the kept tokens on "
              "example images (OUT/plots/*.png, shown in OUT/results.html).")
METHODS_HELP = ("Comma-separated method specs, each a name with optional options, e.g. 'msp,knn\\[k=10],tagood\\[epochs=30]' "
                "(`tagood methods` lists the names and options)")

CacheOpt = Annotated[Path | None, typer.Option("--cache", help=CACHE_HELP)]
DeviceOpt = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]
VerboseOpt = Annotated[bool, typer.Option("-v", "--verbose", help="Also log DEBUG lines.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="Log warnings and errors only, no progress bars "
                                                               "(a benchmark's run.log still records everything).")]
StreamAboveOpt = Annotated[float | None, typer.Option("--stream-above-gb", help=STREAM_HELP)]
BenchStreamAboveOpt = Annotated[float | None, typer.Option("--stream-above-gb", help=BENCH_STREAM_HELP)]
StreamRatioOpt = Annotated[float | None, typer.Option("--stream-ratio", help=STREAM_RATIO_HELP)]
PlotsOpt = Annotated[bool, typer.Option("--plots", help=PLOTS_HELP)]

# -- the backbone (tagger) and its files: `tagood extract` and `tagood fit` -------------------------------------
BackboneOpt = Annotated[str, typer.Option("--backbone", help="The tagger: efficientnet-lite0 / efficientnet-lite2 "
                                                             "(built in), ram or clip.")]
CheckpointOpt = Annotated[Path | None, typer.Option("--checkpoint", help="ram: RAM / RAM++ .pth or a "
                                                                              "`tagood convert ram` folder.")]
TagsOpt = Annotated[Path | None, typer.Option("--tags", help="ram: ram_tag_list.txt (not needed for a converted folder).")]
ThresholdsOpt = Annotated[Path | None, typer.Option("--thresholds", help="ram: ram_tag_list_threshold.txt "
                                                                              "(per-tag thresholds).")]
ClipOpt = Annotated[Path | None, typer.Option("--clip", help="clip: a Hugging Face CLIP directory.")]
VocabOpt = Annotated[Path | None, typer.Option("--vocabulary", help="clip: a text file of tag names, one per line "
                                                                         "(default: the 1000 ImageNet class names).")]

# -- class folders: `tagood extract` and `tagood fit` -------------------------------------------------------------
SkipEmptyOpt = Annotated[bool, typer.Option("--skip-empty-classes", help=(
    "Leave out, with a warning, a class folder that cannot be read or holds no image (default: an error naming it); "
    "the class list saved is the one the detector was fitted on."))]
