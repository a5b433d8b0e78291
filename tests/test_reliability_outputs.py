"""Outputs never clobber (issue 23, items 1, 3 and 7): tagood writes only regular files, atomically. A device node,
a FIFO, a socket or a folder named as ``--out`` -- or a symbolic link to one -- is refused before any work with a
message naming it; a benchmark run folder is replaced as a whole or not at all (a full disk mid-run leaves the old
folder exactly as it was); ``tagood metrics`` refuses a FIFO in place of ``scores.npz`` instead of hanging.

The special files are made in a temp folder (a FIFO, a symbolic link to ``/dev/null``, and as root a private
character device with /dev/null's numbers), so a wrong writer could only ever replace the test's own files."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from image_folders import fashion_folder, folder_config
from tagood.cli.main import app
from tagood.runtime import fileio

runner = CliRunner()


def _run(args: list[object]):
    return runner.invoke(app, [str(a) for a in args], terminal_width=200)


def _refused(r, *needles: str) -> None:
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "unexpected error" not in r.output, r.output
    for n in needles:
        assert n in r.output.replace("\n", ""), (n, r.output)


def _special(tmp_path: Path, kind: str) -> Path:
    """A special file named ``out`` in ``tmp_path`` (skips where it cannot be made)."""
    p = tmp_path / "out"
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "symlink to /dev/null":
        p.symlink_to("/dev/null")
    elif kind == "character device":
        try:  # a private node with /dev/null's numbers: needs root (CI runs as a normal user: skipped there)
            os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except (PermissionError, OSError):
            pytest.skip("making a device node needs root")
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    elif kind == "folder":
        p.mkdir()
    return p


def _still(p: Path, kind: str) -> bool:
    mode = os.lstat(p).st_mode
    return {"fifo": stat.S_ISFIFO, "symlink to /dev/null": stat.S_ISLNK, "character device": stat.S_ISCHR,
            "socket": stat.S_ISSOCK, "folder": stat.S_ISDIR}[kind](mode)


KINDS = ["symlink to /dev/null", "fifo", "character device", "socket", "folder"]


@pytest.fixture(scope="module")
def root(tmp_path_factory, tagood_home) -> Path:
    """Image folders (train / test / ood), a fitted `tagood fit` detector, a feature cache."""
    root = tmp_path_factory.mktemp("h23a-out")
    fashion_folder(root / "train", {"trouser": 1, "bag": 8}, 12, "train")
    fashion_folder(root / "test", {"trouser": 1, "bag": 8}, 5)
    fashion_folder(root / "ood", {"sneaker": 7}, 5)
    r = _run(["fit", root / "train", "--out", root / "det", "--methods", "knn[k=3]", "--cache", root / "c"])
    assert r.exit_code == 0, r.output
    return root


# -- one file: `tagood score --out`, the atomic writers --------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_score_out_refuses_special_files(root, tmp_path, kind):
    out = _special(tmp_path, kind)
    r = _run(["score", root / "det", root / "test", "--out", out, "--cache", tmp_path / "c"])
    _refused(r, str(out), "folder" if kind == "folder" else "not a regular file")
    assert _still(out, kind)
    assert not (tmp_path / "c").exists()  # refused before any work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp file left


def test_score_out_on_a_link_to_a_file_replaces_the_link(root, tmp_path):
    """A symbolic link to a regular file is replaced by the new file like any file; the file it pointed to is not
    written through it (a link planted in a shared folder cannot redirect a write)."""
    target = tmp_path / "real.csv"
    target.write_text("old")
    (tmp_path / "link.csv").symlink_to(target)
    r = _run(["score", root / "det", root / "test", "--out", tmp_path / "link.csv", "--cache", root / "c"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "link.csv").is_symlink() and (tmp_path / "link.csv").read_text().startswith("path,score,is_ood")
    assert target.read_text() == "old"


@pytest.mark.parametrize("kind", ["symlink to /dev/null", "fifo", "character device", "folder"])
def test_every_atomic_writer_refuses_special_files(tmp_path, kind):
    out = _special(tmp_path, kind)
    writers = [lambda: fileio.atomic_write_bytes(out, b"x"), lambda: fileio.atomic_write_json(out, {"a": 1}),
               lambda: fileio.atomic_write_with(out, lambda t: t.write_bytes(b"x")),
               lambda: fileio.atomic_copy(__file__, out), lambda: fileio.atomic_write_files({out: b"x"})]
    for write in writers:
        with pytest.raises(fileio.OutputPathError, match=str(out)):
            write()
        assert _still(out, kind)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_folder_writers_refuse_a_file_or_device(tmp_path):
    for kind in ("fifo", "symlink to /dev/null"):
        sub = tmp_path / kind.replace(" ", "_").replace("/", "_")
        sub.mkdir()
        out = _special(sub, kind)
        with pytest.raises(fileio.OutputPathError, match="not a folder"):
            with fileio.atomic_directory(out):
                pass
        with pytest.raises(fileio.OutputPathError, match="not a folder"):
            with fileio.replaced_directory(out):
                pass
        assert _still(out, kind)


def test_fit_out_refuses_a_file(root, tmp_path):
    out = _special(tmp_path, "fifo")
    r = _run(["fit", root / "train", "--out", out, "--methods", "knn[k=3]", "--cache", tmp_path / "c"])
    _refused(r, str(out), "not a folder")
    assert _still(out, "fifo")
    assert not (tmp_path / "c").exists()  # refused before any work


def test_metrics_out_refuses_a_file(tmp_path):
    from tagood.bench.scores import save_scores

    save_scores(tmp_path / "run" / "scores.npz", {"msp": {"test": np.arange(5.0), "x": np.arange(5.0) + 2}})
    out = _special(tmp_path, "fifo")
    r = _run(["metrics", tmp_path / "run", "--out", out])
    _refused(r, str(out), "not a folder")
    assert _still(out, "fifo")


def test_open_regular_does_not_wait_on_a_fifo(tmp_path):
    """Reading: a FIFO with no writer is refused at once (a subprocess with a timeout, so a hang fails the test)."""
    os.mkfifo(tmp_path / "f")
    code = (f"from tagood.runtime import fileio\ntry:\n    fileio.read_regular_bytes({str(tmp_path / 'f')!r})\n"
            f"except fileio.NotRegularFileError as e:\n    print(e)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("read_regular_bytes waited on a FIFO")
    assert "is a FIFO (named pipe), not a regular file" in r.stdout, r.stdout + r.stderr


# -- a run folder: `tagood bench --out`, `tagood metrics` -------------------------------------------------------------
def _bench(root: Path, out: Path, methods: list[str], *extra: object):
    cfg = folder_config(root / f"bench-{'-'.join(methods)}.toml", methods, "sneakers", name="h23a")
    return _run(["bench", cfg, "--out", out, "--cache", root / "c", *extra])


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_bench_replaces_the_run_folder_as_a_whole(root, tmp_path):
    out = tmp_path / "run"
    r = _bench(root, out, ["msp"], "--plots")
    assert r.exit_code == 0, r.output
    assert (out / "plots" / "msp.png").is_file() and (out / "results.html").is_file()
    r = _bench(root, out, ["energy"])
    assert r.exit_code == 0, r.output
    assert not (out / "plots").exists()  # nothing of the first run is left beside the second's files
    res = json.loads((out / "results.json").read_text())
    assert {x["method"] for x in res["rows"]} == {"energy"}
    assert str(out / "results.html") in r.output.replace("\n", "") and ".tmp" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left


def test_a_failed_run_leaves_the_old_run_folder_untouched(root, tmp_path, monkeypatch):
    """A full disk while the run folder is written (here: when scores.npz is saved, after results.json/.md/.csv):
    the old run folder is exactly as it was, not results.* of the new run beside scores.npz of the old one."""
    out = tmp_path / "run"
    r = _bench(root, out, ["msp"])
    assert r.exit_code == 0, r.output
    before = _snapshot(out)

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("tagood.bench.runner.save_scores", full_disk)
    r = _bench(root, out, ["energy"])
    assert r.exit_code != 0
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_bench_refuses_a_folder_it_did_not_write(root, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = _bench(root, out, ["msp"])
    _refused(r, str(out), "'notes.txt'", "new or empty folder")
    assert _snapshot(out) == {"notes.txt": b"keep me"}


@pytest.mark.parametrize("kind", ["fifo", "symlink to /dev/null"])
def test_bench_out_refuses_special_files(root, tmp_path, kind):
    out = _special(tmp_path, kind)
    r = _bench(root, out, ["msp"])
    _refused(r, str(out), "not a folder")
    assert _still(out, kind)


def test_results_files_change_together(tmp_path, monkeypatch):
    """results.json / .md / .csv (`tagood metrics --out`) are written in full before any is renamed into place: a
    failure while writing them leaves the three old files."""
    from tagood.bench.report import writers

    res = writers.build_results([{"method": "msp", "ood": "x", "auroc": 50.0, "fpr95": 95.0}], None, {})
    writers.write_all(res, tmp_path)
    before = _snapshot(tmp_path)
    changed = writers.build_results([{"method": "msp", "ood": "x", "auroc": 60.0, "fpr95": 90.0}], None, {})
    real_fdopen = os.fdopen
    calls = {"n": 0}

    def fdopen(fd, *a, **k):  # the third file's write hits a full disk
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fdopen(fd, *a, **k)

    monkeypatch.setattr(fileio.os, "fdopen", fdopen)
    with pytest.raises(OSError, match="No space"):
        writers.write_all(changed, tmp_path)
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before


def test_metrics_refuses_a_fifo_scores_file(tmp_path):
    """`tagood metrics RUN` with a FIFO in place of scores.npz exits 2 at once (subprocess with a timeout)."""
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "scores.npz")
    try:
        r = subprocess.run([sys.executable, "-m", "tagood", "metrics", str(run)], capture_output=True, text=True,
                           timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("`tagood metrics` hung on a FIFO in place of scores.npz")
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "scores.npz is a FIFO" in out.replace("\n", "") and "Traceback" not in out, out


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip", b"\x93NUMPY garbage"])
def test_metrics_refuses_a_damaged_scores_file(tmp_path, content):
    (tmp_path / "scores.npz").write_bytes(content)
    r = _run(["metrics", tmp_path])
    _refused(r, "scores.npz")


def test_metrics_reads_a_real_scores_file(tmp_path):
    from tagood.bench.scores import load_scores, save_scores

    save_scores(tmp_path / "scores.npz", {"msp": {"test": np.arange(5.0), "x": np.arange(5.0) + 2}}, {"test": list("abcde")})
    scores, ids = load_scores(tmp_path)
    assert scores["msp"]["x"].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0] and ids["test"] == list("abcde")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2 exchange", "two renames"])
def test_replaced_directory_swaps_a_whole_folder(tmp_path, monkeypatch, exchange):
    """The new folder takes the old one's place whole; an error inside leaves the old one; a nested call writes into
    the outer staging folder; both the atomic exchange and the two-rename fallback (other systems)."""
    if not exchange:
        monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with fileio.replaced_directory(out) as stage:
            (stage / "new.txt").write_text("new")
            raise RuntimeError("disk full")
    assert _snapshot(out) == {"old.txt": b"old"}
    with fileio.replaced_directory(out) as stage:
        with fileio.replaced_directory(stage) as inner:
            assert inner == stage
            (inner / "new.txt").write_text("new")
        assert _snapshot(out) == {"old.txt": b"old"}  # nothing changes before the outer block ends
    assert _snapshot(out) == {"new.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    refused = []

    def refuse(p: Path) -> None:
        refused.append(p)
        raise fileio.OutputPathError(f"{p}: not a run folder")

    with pytest.raises(fileio.OutputPathError):
        with fileio.replaced_directory(out, check=refuse):
            pass
    assert refused == [out] and _snapshot(out) == {"new.txt": b"new"}
