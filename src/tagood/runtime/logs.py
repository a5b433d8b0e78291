"""Logging set-up of the ``tagood`` command and of benchmark runs.

* On a terminal, log records go through rich (colours, aligned levels, wrapped to the terminal).
* When stderr is not a terminal (redirected to a file, a pipe, CI), one plain line per record with a
  time stamp, never wrapped: ``2026-11-30 06:40:12 INFO    tagood.extract: message``.
* :func:`run_log` adds a plain file handler (``run.log`` in a run's output folder) for the duration of
  a run; it records INFO and up even under ``--quiet`` (DEBUG too under ``--verbose``).

Verbosity: ``quiet`` shows warnings and errors only on the console (progress bars are switched off too,
:func:`tagood.runtime.progress.set_enabled`); ``verbose`` adds DEBUG records.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

#: Plain line format of redirected stderr and of ``run.log``.
PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
PLAIN_DATEFMT = "%Y-%m-%d %H:%M:%S"
#: Third-party loggers held at WARNING (their INFO lines say nothing a tagood user needs).
NOISY = ("onnxruntime", "transformers", "PIL", "urllib3", "filelock", "matplotlib", "huggingface_hub", "sentence_transformers")
#: Name of the console handler :func:`setup_logging` installs (a later call replaces it).
CONSOLE_HANDLER = "tagood.console"


def console_level(quiet: bool = False, verbose: bool = False) -> int:
    """The console handler's level: WARNING when ``quiet``, DEBUG when ``verbose``, else INFO."""
    if quiet and verbose:
        raise ValueError("--quiet and --verbose exclude each other; give one of them")
    return logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)


def plain_formatter() -> logging.Formatter:
    """One unwrapped line per record, with date, time, level and logger name."""
    return logging.Formatter(PLAIN_FORMAT, PLAIN_DATEFMT)


def _is_tty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _CurrentStderrHandler(logging.StreamHandler[IO[str]]):
    """A plain handler writing to whatever ``sys.stderr`` is when a record is emitted, not the stream of the moment
    it was made: a caller that swaps ``sys.stderr`` for a while and closes its stand-in (a test runner invoking the
    command in-process) leaves no handler pointing at a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:  # StreamHandler.__init__ / setStream assign it: always sys.stderr
        pass


def setup_logging(quiet: bool = False, verbose: bool = False, stream: IO[str] | None = None) -> logging.Handler:
    """Configure the root logger for a command: a rich handler on a terminal, a plain one otherwise.

    The root logger's level is INFO (DEBUG with ``verbose``) so that :func:`run_log` files record INFO
    lines even when the console shows warnings only (``quiet``). Returns the console handler."""
    from tagood.runtime import progress

    level = console_level(quiet, verbose)
    follow_stderr = stream is None
    stream = sys.stderr if stream is None else stream
    handler: logging.Handler
    if _is_tty(stream):
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(file=stream), show_path=False, rich_tracebacks=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _CurrentStderrHandler() if follow_stderr else logging.StreamHandler(stream)
        handler.setFormatter(plain_formatter())
    handler.setLevel(level)
    root = logging.getLogger()
    for h in list(root.handlers):  # replace an earlier set-up (tests call commands repeatedly in one process)
        if h.get_name() == CONSOLE_HANDLER:
            root.removeHandler(h)
    handler.set_name(CONSOLE_HANDLER)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    progress.set_enabled(not quiet)
    from PIL import Image

    # tagood.data.decode reports an image over PIL's limit as one log line naming the file instead
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return handler


@contextmanager
def run_log(path: str | Path, level: int | None = None, fresh: bool = False) -> Iterator[Path]:
    """Copy every log record of the run into ``path`` (plain lines; appended, or a new file when ``fresh``)
    while the block runs.

    ``level``: the file's threshold (default INFO, or DEBUG when the root logger passes DEBUG, as under
    ``--verbose``). The root logger's level is lowered to it for the block if needed (library use leaves
    the root at WARNING); other handlers keep showing what they showed before."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    old_level = root.level
    # default: INFO, or DEBUG when the root logger already passes DEBUG (``--verbose``)
    lvl = min(old_level or logging.INFO, logging.INFO) if level is None else level
    handler = logging.FileHandler(p, mode="w" if fresh else "a", encoding="utf-8")
    handler.setFormatter(plain_formatter())
    handler.setLevel(lvl)
    root.addHandler(handler)
    raised: list[logging.Handler] = []
    if root.level == logging.NOTSET or root.level > lvl:
        for h in root.handlers:  # handlers that relied on the root's level keep their old threshold
            if h is not handler and h.level == logging.NOTSET:
                h.setLevel(old_level if old_level != logging.NOTSET else logging.WARNING)
                raised.append(h)
        root.setLevel(lvl)
    try:
        yield p
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)
        for h in raised:
            h.setLevel(logging.NOTSET)
