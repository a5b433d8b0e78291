"""Readable logs (issue 15.3): plain unwrapped lines when stderr is not a terminal, --quiet, run.log."""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tagood.runtime import progress
from tagood.runtime.logs import console_level, run_log, setup_logging


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    progress.set_enabled(True)


def test_redirected_lines_are_not_wrapped(restore_root):
    buf = io.StringIO()  # not a terminal
    setup_logging(stream=buf)
    long = "vocabulary " + " ".join(f"tag{i}" for i in range(60))  # ~400 characters
    logging.getLogger("tagood.test").info("%s", long)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].endswith(long) and " INFO    tagood.test: " in lines[0]


def test_quiet_shows_warnings_only_but_run_log_keeps_info(restore_root, tmp_path):
    buf = io.StringIO()
    setup_logging(quiet=True, stream=buf)
    assert not progress._STATE["enabled"]
    log = logging.getLogger("tagood.test")
    with run_log(tmp_path / "run.log", fresh=True) as p:
        log.info("an info line")
        log.warning("a warning line")
        log.debug("a debug line")
    log.info("after the run")
    text = p.read_text()
    assert "an info line" in text and "a warning line" in text and "debug" not in text and "after the run" not in text
    assert "an info line" not in buf.getvalue() and "a warning line" in buf.getvalue()
    assert not any(isinstance(h, logging.FileHandler) and h.baseFilename == str(p) for h in logging.getLogger().handlers)


def test_verbose_adds_debug_and_run_log_is_fresh(restore_root, tmp_path):
    buf = io.StringIO()
    setup_logging(verbose=True, stream=buf)
    (tmp_path / "run.log").write_text("old run\n")
    with run_log(tmp_path / "run.log", fresh=True) as p:
        logging.getLogger("tagood.test").debug("a debug line")
    assert "a debug line" in buf.getvalue() and "a debug line" in p.read_text() and "old run" not in p.read_text()


def test_run_log_without_configured_logging_records_info(tmp_path, restore_root):
    root = restore_root
    root.setLevel(logging.WARNING)  # Python's default for library use
    with run_log(tmp_path / "r.log") as p:
        logging.getLogger("tagood.test").info("library info")
    assert "library info" in p.read_text() and root.level == logging.WARNING


def test_quiet_and_verbose_exclude_each_other():
    with pytest.raises(ValueError, match="exclude"):
        console_level(quiet=True, verbose=True)


def test_vocabulary_logged_once_per_run_and_written_to_the_run_folder(tmp_path, tagood_home, caplog):
    """TagScore, CS and (CE)+CS of one run share one vocabulary: its rule choice and collisions are logged once,
    and each method's vocabulary file is in the run folder (same vocabulary as a fresh fit builds)."""
    from image_folders import fashion_folder
    from tagood.bench.config import BenchConfig
    from tagood.bench.runner import run
    from tagood.detectors.tagood.vocabulary import Vocabulary

    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8, "sandal": 5}, 16, "train")
    fashion_folder(tmp_path / "test", {"trouser": 1, "bag": 8, "sandal": 5}, 6)
    fashion_folder(tmp_path / "ood", {"sneaker": 7}, 6)
    cfg = BenchConfig(name="vocab-once", train={"type": "folder", "root": "train"}, test={"type": "folder", "root": "test"},
                      ood={"sneakers": {"type": "folder", "root": "ood"}}, methods=["tagscore", "cs", "cs[tau=0.25]"],
                      base_dir=tmp_path, pseudo_ood=None)
    with caplog.at_level(logging.INFO):
        _, state = run(cfg, out_dir=tmp_path / "out", cache_root=tmp_path / "c", progress=False)
    assert not state.errors, state.errors
    chosen = [r for r in caplog.records if r.getMessage().startswith("IND vocabulary: rule")]
    assert len(chosen) == 1, [r.getMessage() for r in chosen]
    collisions = [r.getMessage() for r in caplog.records if "collision" in r.getMessage()]
    assert len(collisions) == len(set(collisions))
    files = sorted(p.name for p in (tmp_path / "out").glob("vocabulary-*.tsv"))
    assert files == ["vocabulary-cs.tsv", "vocabulary-cs_tau=0.25.tsv", "vocabulary-tagscore.tsv"]
    loaded = [Vocabulary.load(tmp_path / "out" / f).class_tags for f in files]
    assert loaded[0] == loaded[1] == loaded[2] == state.fitted["cs"].vocab.class_tags
    assert "IND vocabulary: rule" in (tmp_path / "out" / "run.log").read_text()
    # a fresh detector fitted alone builds the same vocabulary
    from tagood import detectors

    train = state.splits["train"].features
    alone = detectors.create("tagscore").fit(train.subset(np.arange(len(train))), state.context)
    assert alone.vocab.class_tags == state.fitted["tagscore"].vocab.class_tags


def test_console_handler_follows_a_swapped_stderr(capsys) -> None:
    """A command run in-process by a test runner (which swaps sys.stderr and closes its stand-in) leaves no handler
    on a closed file: a later record goes to the sys.stderr of that moment, without a 'Logging error'."""
    from typer.testing import CliRunner

    from tagood.cli import app

    r = CliRunner().invoke(app, ["cache", "ls", "--cache", str(Path(tempfile.mkdtemp()) / "none")])
    assert r.exit_code == 0, r.output
    logging.getLogger("tagood.test").warning("a record after the command")
    err = capsys.readouterr().err
    assert "a record after the command" in err and "Logging error" not in err
