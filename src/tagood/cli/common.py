"""What every ``tagood`` command shares: the console, error messages, and :func:`cli_command`, the one wrapper
that opens each command (log setup, device check) and turns any error into one message and exit status 2.

Used by every command module of :mod:`tagood.cli`. Scores everywhere: higher = more OOD.

A command's error -- any :class:`tagood.errors.TagoodError` -- exits with status 2 and one line that names the file or
option and what to do; ``tagood --debug ...`` (or ``TAGOOD_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from tagood.errors import CheckpointError, TagoodError

F = TypeVar("F", bound=Callable[..., Any])

_DEBUG = {"on": False}
log = logging.getLogger("tagood.cli.main")
console = Console() if sys.stdout.isatty() else Console(width=200)

#: marks a function wrapped by :func:`cli_command` (a test checks that every registered command is)
WRAPPED = "__tagood_cli_command__"


def set_debug(on: bool) -> None:
    """``tagood --debug``: errors show their traceback."""
    _DEBUG["on"] = on


def debug() -> bool:
    return _DEBUG["on"] or os.environ.get("TAGOOD_DEBUG", "").lower() in ("1", "true", "yes", "on")


def error(msg: str) -> None:
    """Print ``msg`` in red (as given: no rich markup is read in it)."""
    console.print(f"[red]{escape(msg)}[/]", soft_wrap=True)


def fail(msg: str) -> NoReturn:
    """Print ``msg`` and exit with status 2."""
    error(msg)
    raise typer.Exit(2)


def user_message(e: BaseException) -> str:
    """One line for an exception that escaped a command.

    A :class:`tagood.errors.TagoodError` (every error a user can cause: a bad option, config, path, image folder,
    cache entry or saved detector) is shown as its message, which names the file or option and what to do; so is an
    ``OSError`` that carries the operating system's reason (``PATH: Permission denied``, a full disk). Anything
    else is a bug: its type and message with a pointer to ``tagood --debug``.

    Args:
        e: the exception that escaped the command.

    Returns:
        The line to print (without colour markup).
    """
    if isinstance(e, TagoodError):
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return f"{str(e.filename) + ': ' if e.filename else ''}{e.strerror}"
    return f"unexpected error ({type(e).__name__}: {e}); run `tagood --debug ...` for the traceback and report it"


def setup_logging(verbose: bool, quiet: bool = False) -> None:
    """Rich log lines on a terminal, plain unwrapped lines otherwise (:mod:`tagood.runtime.logs`); ``quiet``: warnings only
    (always on the ranks other than 0 of a torchrun world)."""
    from tagood.runtime.distributed import world
    from tagood.runtime.logs import setup_logging as _setup

    if verbose and quiet:
        fail("--quiet and --verbose exclude each other; give one of them")
    if not world().is_main:  # under torchrun rank 0 logs the run; the other ranks only their warnings and errors
        quiet, verbose = True, False
    _setup(quiet=quiet, verbose=verbose)


def configure_threads(threads: int | None) -> int:
    """The thread budget of this process (:func:`tagood.runtime.threads.configure`), set before any command imports
    torch; a bad ``--threads``, ``$TAGOOD_THREADS`` or ``$OMP_NUM_THREADS`` exits 2 with one line naming it."""
    from tagood.runtime.threads import configure

    try:
        return configure(threads)
    except TagoodError as e:
        if debug():
            raise
        fail(str(e))


def check_device(device: str) -> str:
    """The device this process drives (``cuda`` under torchrun: ``cuda:LOCAL_RANK``,
    :func:`tagood.runtime.distributed.local_device`); exits 2 with a clear message unless it exists here (before any work)."""
    import torch

    from tagood.backbones.factory import single_device
    from tagood.runtime.distributed import local_device

    try:
        single_device(device)  # a device list: one process per device, through torchrun (the message says how)
    except ValueError as e:
        fail(str(e))
    d = local_device(device)
    try:
        td = torch.device(d)
    except (RuntimeError, ValueError):
        fail(f"--device {d!r} is not a device; use cpu, cuda, cuda:0 or mps")
    if td.type == "cuda":
        if not torch.cuda.is_available():
            fail(f"--device {d}: no CUDA GPU is visible here (torch.cuda.is_available() is False); use --device cpu")
        if td.index is not None and td.index >= torch.cuda.device_count():
            fail(f"--device {d}: only {torch.cuda.device_count()} CUDA device(s) are visible (cuda:0 ..)")
    elif td.type == "mps":
        if not torch.backends.mps.is_available():
            fail(f"--device {d}: the Apple MPS backend is not available here; use --device cpu")
    elif td.type != "cpu":
        fail(f"--device {d}: device type '{td.type}' is not supported; use cpu, cuda[:N] or mps")
    return d


def cli_command() -> Callable[[F], F]:
    """The one wrapper of every ``tagood`` command (put it under ``@app.command()``).

    Opening: ``--verbose`` / ``--quiet`` set up logging (:func:`setup_logging`), ``--device`` is checked and mapped to
    this process's device (:func:`check_device`; the command receives the mapped string). Then the command runs;
    an exception escaping it prints :func:`user_message` and exits 2 (``typer.Exit`` / usage errors pass through;
    ``--debug`` re-raises)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                if "verbose" in kwargs or "quiet" in kwargs:
                    setup_logging(bool(kwargs.get("verbose")), bool(kwargs.get("quiet")))
                if isinstance(kwargs.get("device"), str):
                    kwargs["device"] = check_device(kwargs["device"])
                return fn(*args, **kwargs)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001 - the CLI boundary: every error becomes one message
                if debug() or type(e).__module__.split(".")[0] in ("typer", "click"):  # typer.Exit, usage errors
                    raise
                fail(user_message(e))

        setattr(run, WRAPPED, True)
        return run  # type: ignore[return-value]

    return wrap


# -- helpers of several commands ---------------------------------------------------------------------------------
def is_main() -> bool:
    """Rank 0 of a torchrun world (or a single process): the one that prints and writes the results."""
    from tagood.runtime.distributed import world

    return world().is_main


def method_specs(methods: str | None) -> list[str] | None:
    """Split ``--methods 'a,b[x=1,y=2],c'`` on the commas outside brackets; None when not given. A method named
    twice is a :class:`tagood.errors.ConfigError` (it ran twice under one name before)."""
    from tagood.detectors.registry import split_specs

    if not methods:
        return None
    specs = split_specs(methods)
    twice = duplicate_specs(specs)
    if twice:
        from tagood.errors import ConfigError

        raise ConfigError(f"--methods names {', '.join(twice)} more than once; name each method (with its options) once")
    return specs


def duplicate_specs(specs: list[str]) -> list[str]:
    """The method specs of ``specs`` that repeat an earlier one (same detector, same options; the order of the
    options and spaces do not count)."""
    from tagood.detectors.registry import parse_name

    seen: set[str] = set()
    out: list[str] = []
    for s in specs:
        base, opts = parse_name(s)
        key = repr((base, sorted(opts.items())))
        if key in seen:
            out.append(s)
        seen.add(key)
    return out


_PICKLE_WEIGHTS = ("pytorch_model.bin", "model.bin", "pytorch_model.pt", "model.pt", "model.pth")


def check_clip_dir(path: Path | str | None) -> None:
    """A CLIP directory whose weights exist only as a pickle is refused before anything unpickles it."""
    if path is None or not Path(path).is_dir():
        return
    p = Path(path)
    if any(p.glob("*.safetensors")):
        return
    pickles = [f.name for f in p.iterdir() if f.name in _PICKLE_WEIGHTS or f.name.startswith("pytorch_model-")]
    if pickles:
        raise CheckpointError(f"{p}: the CLIP weights are only in {', '.join(sorted(pickles))}, a pickle file, which can run "
                          "code when it is loaded; tagood reads safetensors only. Convert it once on a trusted machine "
                          "(CLIPModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)) to get "
                          "model.safetensors")


def backbone_files(checkpoint: Path | None, tags: Path | None, thresholds: Path | None, clip: Path | None,
                   vocabulary: Path | None) -> dict[str, str]:
    """The backbone spec keys (:func:`tagood.backbones.factory.build_backbone`) of the file options that were given."""
    given = {"checkpoint": checkpoint, "tag_list": tags, "thresholds": thresholds, "path": clip, "vocabulary": vocabulary}
    return {k: str(v) for k, v in given.items() if v is not None}


def stream_limit(v: float | None) -> float | None:
    """``--stream-above-gb``: the cache's default when not given, None (never stream) for a negative value; NaN is
    refused (:class:`tagood.errors.ConfigError`): it compares false with every size, which streamed everything."""
    import math

    from tagood.cache import STREAM_ABOVE_GB
    from tagood.errors import ConfigError

    if v is not None and math.isnan(v):
        raise ConfigError("--stream-above-gb nan is not a number of GiB; give a size such as 8, 0 (always stream) or -1 "
                          "(never stream)")
    return STREAM_ABOVE_GB if v is None else (None if v < 0 else v)
