"""Progress of long work: a rich bar on a terminal, periodic one-line log updates otherwise.

``with progress_bar("extract test", total=n, unit="img") as advance: ... advance(k, loss=0.31)``

* stderr is a terminal: a transient rich bar (description, bar, done/total, rate, elapsed, ETA and the
  latest ``info`` such as ``epoch 3/10 loss 0.312``).
* otherwise (redirected to a file, CI): a log line on the ``tagood.runtime.progress`` logger (INFO) whenever
  another 10% is done or 30 s have passed, at most one per 2 s, e.g.
  ``extract test: 40% (80/200 img) 31.2 img/s, elapsed 2.6 s, ETA 3.8 s; epoch 3/10, loss 0.312``.
* in both cases one closing line with the total time and rate, at INFO when the work took at least
  ``SILENT_SECONDS`` (DEBUG otherwise, so a quick step does not add a line to a redirected log).

:func:`set_enabled` (``--quiet``) switches the bars off; the log lines still reach ``run.log``.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

log = logging.getLogger("tagood.runtime.progress")

#: A line when another this fraction of the work is done ...
LINE_FRACTION = 0.10
#: ... or this many seconds passed since the last line ...
LINE_SECONDS = 30.0
#: ... but never two lines closer than this many seconds.
MIN_LINE_SECONDS = 2.0
#: Work shorter than this closes with a DEBUG line instead of an INFO one.
SILENT_SECONDS = 2.0

_STATE = {"enabled": True}


def set_enabled(enabled: bool) -> None:
    """Switch the terminal progress bars on or off for the process (``--quiet`` switches them off)."""
    _STATE["enabled"] = bool(enabled)


class Advance(Protocol):
    """``advance(n=1, **info)``: ``n`` more units done; ``info`` (e.g. ``epoch="3/10", loss=0.31``) is shown."""

    def __call__(self, n: int = 1, **info: Any) -> None: ...


def format_seconds(s: float) -> str:
    """``42.0 s``, ``3 min 05 s``, ``2 h 04 min``; ``?`` for an unknown (non-finite) time."""
    if not math.isfinite(s):
        return "?"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def format_info(info: dict[str, Any]) -> str:
    """``epoch 3/10, loss 0.312`` (floats with 4 significant digits)."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())


class LineReporter:
    """The non-terminal progress: decides when a line is due and formats it. ``None`` settings take the
    module's ``LINE_FRACTION`` / ``LINE_SECONDS`` / ``MIN_LINE_SECONDS``; ``clock`` defaults to ``time.monotonic``."""

    def __init__(self, description: str, total: int, completed: int = 0, unit: str = "", *,
                 fraction: float | None = None, seconds: float | None = None, min_seconds: float | None = None,
                 clock: Callable[[], float] | None = None, logger: logging.Logger = log) -> None:
        self.description, self.total, self.unit = description, max(int(total), 0), unit
        self.start_done = self.done = int(completed)
        self.fraction = LINE_FRACTION if fraction is None else fraction
        self.seconds = LINE_SECONDS if seconds is None else seconds
        self.min_seconds = MIN_LINE_SECONDS if min_seconds is None else min_seconds
        self.clock, self.logger = (time.monotonic if clock is None else clock), logger
        self.t0 = self.t_last = self.clock()
        self.done_last = self.done
        self.info: dict[str, Any] = {}
        self.lines = 0

    def rate(self, now: float) -> float:
        """Units per second since the start (resumed units not counted)."""
        dt = now - self.t0
        return (self.done - self.start_done) / dt if dt > 0 else float("nan")

    def line(self, now: float) -> str:
        u = f" {self.unit}" if self.unit else ""
        r = self.rate(now)
        left = self.total - self.done
        eta = left / r if r > 0 else float("nan")
        pct = f"{100 * self.done / self.total:.0f}% " if self.total else ""
        s = (f"{self.description}: {pct}({self.done}/{self.total}{u}) "
             f"{'?' if not math.isfinite(r) else format(r, '.3g')}{u or ' items'}/s, "
             f"elapsed {format_seconds(now - self.t0)}, ETA {format_seconds(eta)}")
        return s + (f"; {format_info(self.info)}" if self.info else "")

    def advance(self, n: int = 1, **info: Any) -> None:
        self.done += int(n)
        self.info.update(info)
        now = self.clock()
        since = now - self.t_last
        step = self.total * self.fraction if self.total else math.inf
        due = (self.done - self.done_last >= step or since >= self.seconds) and since >= self.min_seconds
        if due and self.done < self.total:
            self.logger.info("%s", self.line(now))
            self.t_last, self.done_last = now, self.done
            self.lines += 1

    def close(self) -> None:
        now = self.clock()
        dt = now - self.t0
        u = f" {self.unit}" if self.unit else ""
        r = self.rate(now)
        msg = (f"{self.description}: {self.done}/{self.total}{u} in {format_seconds(dt)}"
               + (f" ({r:.3g}{u or ' items'}/s)" if math.isfinite(r) and self.done > self.start_done else "")
               + (f"; {format_info(self.info)}" if self.info else ""))
        self.logger.log(logging.INFO if dt >= SILENT_SECONDS else logging.DEBUG, "%s", msg)


def _stderr_is_tty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


@contextmanager
def progress_bar(description: str, total: int, completed: int = 0, enabled: bool = True, unit: str = "") -> Iterator[Advance]:
    """Context manager yielding ``advance(n=1, **info)`` (module docstring).

    ``enabled=False`` turns off the bar and the periodic lines (for steps known to be short); the closing
    line is still logged (at DEBUG when short). ``completed``: units already done (a resumed extraction)."""
    reporter = LineReporter(description, total, completed, unit)
    draw_bar = enabled and _STATE["enabled"] and _stderr_is_tty()
    if not draw_bar:
        def advance(n: int = 1, **info: Any) -> None:
            if enabled:
                reporter.advance(n, **info)
            else:
                reporter.done += int(n)
                reporter.info.update(info)
        try:
            yield advance
        finally:
            reporter.close()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        transient=True,
    )
    u = f" {unit}" if unit else ""
    with prog:
        task = prog.add_task(description, total=total, completed=completed, info="", rate="")

        def advance_bar(n: int = 1, **info: Any) -> None:
            reporter.done += int(n)
            reporter.info.update(info)
            r = reporter.rate(reporter.clock())
            prog.update(task, advance=n, info=format_info(reporter.info),
                        rate=f"{r:.3g}{u or ' items'}/s" if math.isfinite(r) else "")

        yield advance_bar
    reporter.close()
