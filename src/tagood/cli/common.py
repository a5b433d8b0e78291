"""What every ``tagood`` command shares: the console, error messages, and :func:`cli_command`, the one wrapper
that opens each command (log setup, device check) and turns any error into one message and exit status 2.

Used by :mod:`tagood.cli.main` and :mod:`tagood.cli.cache`. Scores everywhere: higher = more OOD.

A command's error exits with status 2 and one line that names the file or option and what to do;
``tagood --debug ...`` (or ``TAGOOD_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Any, Callable, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

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


def _bad_input_types() -> tuple[type[BaseException], ...]:
    from tagood.cache import CacheError
    from tagood.data.source import DataSourceError, ImageDecodeError

    return CacheError, DataSourceError, ImageDecodeError, ValueError


def user_message(e: BaseException, bad_input: tuple[type[BaseException], ...] = ()) -> str:
    """One line for an exception that escaped a command: the message of the errors that describe bad input
    (``bad_input`` adds types for one command), the exception type too for anything else."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.strerror:
        return f"{str(e.filename) + ': ' if e.filename else ''}{e.strerror}"
    if isinstance(e, (*_bad_input_types(), FileNotFoundError, *bad_input)) or type(e).__name__.endswith(
            ("LoadError", "CheckpointError", "ConfigError")):
        return str(e)
    return f"unexpected error ({type(e).__name__}: {e}); run `tagood --debug ...` for the traceback and report it"


def setup_logging(verbose: bool, quiet: bool = False) -> None:
    """Rich log lines on a terminal, plain unwrapped lines otherwise (:mod:`tagood.runtime.logs`); ``quiet``: warnings only
    (always on the ranks other than 0 of a torchrun world)."""
    from tagood.runtime.logs import setup_logging as _setup

    from tagood.runtime.distributed import world

    if verbose and quiet:
        fail("--quiet and --verbose exclude each other; give one of them")
    if not world().is_main:  # under torchrun rank 0 logs the run; the other ranks only their warnings and errors
        quiet, verbose = True, False
    _setup(quiet=quiet, verbose=verbose)


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


def cli_command(bad_input: tuple[type[BaseException], ...] = ()) -> Callable[[F], F]:
    """The one wrapper of every ``tagood`` command (put it under ``@app.command()``).

    Opening: ``--verbose`` / ``--quiet`` set up logging (:func:`setup_logging`), ``--device`` is checked and mapped to
    this process's device (:func:`check_device`; the command receives the mapped string). Then the command runs;
    an exception escaping it prints :func:`user_message` and exits 2 (``typer.Exit`` / usage errors pass through;
    ``--debug`` re-raises). ``bad_input``: further exception types whose message is shown as is."""

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
                fail(user_message(e, bad_input))

        setattr(run, WRAPPED, True)
        return run  # type: ignore[return-value]

    return wrap
