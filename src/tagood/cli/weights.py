"""``tagood convert ram`` and ``tagood selftest``: prepare real tagger weights and check them after download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from tagood.cli.common import cli_command, console, error
from tagood.cli.options import DeviceOpt, QuietOpt, VerboseOpt
from tagood.errors import ConfigError

convert_app = typer.Typer(no_args_is_help=True, help="Convert official checkpoints into tagood's compact format.")


@convert_app.command("ram")
@cli_command()
def convert_ram(
    checkpoint: Annotated[Path, typer.Argument(help="Official RAM / RAM++ checkpoint (.pth, {'model': state_dict}).")],
    out: Annotated[Path, typer.Option(help="Output directory: model.safetensors + config.json + tags.txt "
                                           "(+ thresholds.txt).")],
    tags: Annotated[Path, typer.Option(help="RAM tag list (ram_tag_list.txt).")],
    thresholds: Annotated[Path | None, typer.Option(help="Per-tag thresholds (ram_tag_list_threshold.txt).")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Store weights in fp16 (half the size).")] = False,
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Keep only the tagger's weights of an official RAM checkpoint (drops the text encoder/decoder)."""
    from tagood.backbones.ram import convert_ram as _convert

    d = _convert(checkpoint, out, tags, thresholds, fp16=fp16)
    size_in = checkpoint.stat().st_size
    size_out = sum(f.stat().st_size for f in Path(d).iterdir())
    console.print(escape(f"wrote {d}: {size_out / 2**20:.1f} MiB (from {size_in / 2**20:.1f} MiB); load it with backbone "
                         f"name 'ram', checkpoint = {d}"))


@cli_command()
def selftest(
    kind: Annotated[str, typer.Argument(help="ram, clip or efficientnet.")],
    checkpoint: Annotated[Path | None, typer.Option(help="ram: official .pth or a `tagood convert ram` folder; clip: a "
                                                            "Hugging Face CLIP directory or an open_clip file.")] = None,
    tags: Annotated[Path | None, typer.Option(help="ram: ram_tag_list.txt (not needed for a converted folder).")] = None,
    thresholds: Annotated[Path | None, typer.Option(help="ram: ram_tag_list_threshold.txt.")] = None,
    arch: Annotated[str | None, typer.Option(help="clip: open_clip architecture when CHECKPOINT is an open_clip "
                                                     "file.")] = None,
    device: DeviceOpt = "cpu",
    verbose: VerboseOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Check real weights after download: shapes, determinism, attention and zero-shot sense on two real photos."""
    from rich.table import Table

    from tagood.backbones import selftest as st

    if kind == "ram":
        from tagood.backbones.ram import load_ram

        if checkpoint is None:
            raise ConfigError("selftest ram needs --checkpoint (and --tags unless it is a converted folder)")
        checks = st.selftest_tagger(load_ram(checkpoint, tags, thresholds, device=device))
    elif kind == "clip":
        from tagood.backbones.clip import load_clip

        if checkpoint is None:
            raise ConfigError("selftest clip needs --checkpoint DIR (a Hugging Face CLIP directory or an open_clip file)")
        checks = st.selftest_dual_encoder(load_clip(checkpoint, arch=arch, device=device))
    elif kind == "efficientnet":
        from tagood.backbones.efficientnet import EfficientNetLite0

        checks = st.selftest_tagger(EfficientNetLite0(device=device))
    else:
        raise ConfigError(f"selftest KIND must be ram, clip or efficientnet, got {kind!r}")
    t = Table(title=f"self-test: {kind}")
    for col in ("check", "result", "detail"):
        t.add_column(col)
    for c in checks:
        t.add_row(c.name, "[green]pass[/]" if c.passed else "[red]FAIL[/]", escape(c.detail))
    console.print(t)
    if not all(c.passed for c in checks):
        error("self-test failed: the weights, tag list or preprocessing do not behave like the published model")
        raise typer.Exit(1)
