"""The ``tagood`` command line (typer): the app and its commands, one module per command group. Scores everywhere:
higher = more OOD.

============================  =========================================================
``tagood demo / bench``       :mod:`tagood.cli.bench` (``bench imagenet`` its own command)
``tagood metrics``            :mod:`tagood.cli.metrics`
``tagood methods``            :mod:`tagood.cli.methods`
``tagood extract``            :mod:`tagood.cli.extract`
``tagood fit / score``        :mod:`tagood.cli.fitscore`
``tagood convert / selftest`` :mod:`tagood.cli.weights`
``tagood cache``              :mod:`tagood.cli.cache`
============================  =========================================================

Every error a user can cause (a :class:`tagood.errors.TagoodError`) exits with status 2 and one message that names
the file or option and what to do; ``tagood --debug ...`` (or ``TAGOOD_DEBUG=1``) shows the traceback instead. Every
command is wrapped by :func:`tagood.cli.common.cli_command` (its opening: logging, device; its errors).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tagood.cli import bench, extract, fitscore, methods, metrics, weights
from tagood.cli.cache import cache_app
from tagood.cli.common import configure_threads, set_debug

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="OOD detection with tagging and vision-language models (TagOOD, KR-NFT, baselines).")


def _print_version(value: bool) -> None:
    """``tagood --version``: print ``tagood X.Y.Z`` (the one version, :mod:`tagood._version`) and exit."""
    if value:
        from tagood._version import __version__

        typer.echo(f"tagood {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print tagood's version (`tagood X.Y.Z`) and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error (also TAGOOD_DEBUG=1).")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help=(
        "CPU threads for torch, onnxruntime and image decoding together (default: $TAGOOD_THREADS, "
        "$OMP_NUM_THREADS, else the CPUs this process may run on)."))] = None,
) -> None:
    """OOD detection with tagging and vision-language models (TagOOD, KR-NFT, baselines)."""
    from tagood.runtime.alloc import keep_large_allocations
    set_debug(debug)
    configure_threads(threads)  # before any command imports torch: sets its threads and OpenMP's passive wait policy
    keep_large_allocations()  # activations from the heap, not fresh zero-filled pages each batch (tagood.runtime.alloc)


app.command("demo")(bench.demo)
app.add_typer(bench.bench_app, name="bench")
app.command("metrics")(metrics.metrics)
app.command("methods")(methods.methods)
app.command("extract")(extract.extract)
app.add_typer(weights.convert_app, name="convert")
app.command("selftest")(weights.selftest)
app.command("fit")(fitscore.fit)
app.command("score")(fitscore.score)
app.add_typer(cache_app, name="cache")


def main() -> None:  # pragma: no cover - console entry point
    """The ``tagood`` console script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
