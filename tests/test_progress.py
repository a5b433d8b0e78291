"""Progress reporting without a terminal: periodic one-line updates with rate and ETA (issue 15.4)."""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from tagood.runtime import progress
from tagood.runtime.progress import LineReporter, format_seconds, progress_bar


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_every_tenth_with_rate_and_eta(caplog):
    clock = Clock()
    logger = logging.getLogger("test.progress")
    r = LineReporter("train", 100, unit="img", clock=clock, logger=logger)
    with caplog.at_level(logging.INFO, logger="test.progress"):
        for _ in range(100):
            clock.t += 0.5  # 2 img/s: 50 s in all
            r.advance(1, epoch="1/1", loss=0.25)
        r.close()
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 10  # 9 lines at 10%, 20%, ..., 90% and the closing one
    assert lines[0] == "train: 10% (10/100 img) 2 img/s, elapsed 5.0 s, ETA 45.0 s; epoch 1/1, loss 0.25"
    assert lines[4].startswith("train: 50% (50/100 img)") and "ETA 25.0 s" in lines[4]
    assert lines[-1] == "train: 100/100 img in 50.0 s (2 img/s); epoch 1/1, loss 0.25"


def test_time_based_lines_when_progress_is_slow(caplog):
    clock = Clock()
    logger = logging.getLogger("test.progress.slow")
    r = LineReporter("decompose", 1000, clock=clock, logger=logger, seconds=30.0)
    with caplog.at_level(logging.INFO, logger="test.progress.slow"):
        for _ in range(40):  # 1 item every 10 s: 4% after 400 s, never a 10% step
            clock.t += 10.0
            r.advance(1)
    assert len(caplog.records) == 13  # one every 30 s
    assert caplog.records[-1].getMessage() == "decompose: 4% (39/1000) 0.1 items/s, elapsed 6 min 30 s, ETA 2 h 40 min"


def test_short_work_closes_at_debug_only(caplog):
    with caplog.at_level(logging.INFO, logger="tagood.runtime.progress"):
        with progress_bar("quick", 3) as advance:
            advance(3)
    assert not caplog.records
    with caplog.at_level(logging.DEBUG, logger="tagood.runtime.progress"):
        with progress_bar("quick", 3) as advance:
            advance(3)
    assert [r.levelno for r in caplog.records] == [logging.DEBUG] and "quick: 3/3 in" in caplog.records[0].getMessage()


def test_not_a_terminal_gives_log_lines(caplog, monkeypatch):
    monkeypatch.setattr(progress, "MIN_LINE_SECONDS", 0.0)
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    with caplog.at_level(logging.INFO, logger="tagood.runtime.progress"):
        with progress_bar("extract x", 20, completed=10, unit="img") as advance:
            for _ in range(10):
                clock.t += 1.0
                advance(1)
    msgs = [r.getMessage() for r in caplog.records]
    # resumed at 10/20: the rate counts this run's images only
    assert msgs[0] == "extract x: 60% (12/20 img) 1 img/s, elapsed 2.0 s, ETA 8.0 s"  # 10% of 20 = 2 images
    assert msgs[-1] == "extract x: 20/20 img in 10.0 s (1 img/s)"


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 50), st.floats(0.0, 20.0)), min_size=1, max_size=80),
       total=st.integers(1, 2000))
def test_lines_are_spaced_and_ordered(steps, total):
    clock = Clock()
    out: list[tuple[float, int]] = []

    class Sink(logging.Logger):
        def info(self, msg, *args, **kw):  # type: ignore[override]
            out.append((clock.t, r.done))

    r = LineReporter("p", total, clock=clock, logger=Sink("sink"), fraction=0.1, seconds=30.0, min_seconds=2.0)
    for n, dt in steps:
        clock.t += dt
        r.advance(n)
    times = [t for t, _ in out]
    assert all(b - a >= 2.0 for a, b in zip([0.0, *times], times, strict=False))  # never two lines within 2 s
    assert all(d < total for _, d in out)  # the closing line reports completion, not a periodic one
    assert len(out) <= clock.t / 2.0 + 1e-9


def test_format_seconds():
    assert format_seconds(5) == "5.0 s" and format_seconds(185) == "3 min 05 s" and format_seconds(7440) == "2 h 04 min"
    assert format_seconds(float("nan")) == "?"
