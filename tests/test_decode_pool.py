"""Decoding in worker processes (tagood.extract.decode_pool): the same cache as threads, failures named, workers
stopped on every way out (end, break, error, a dead worker, Ctrl-C)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from image_folders import fashion_folder
from tagood import data
from tagood.errors import ConfigError
from tagood.extract import extract_split
from tagood.extract.decode_pool import DecodeWorkerError
from tagood.extract.pipeline import decode_batches
from tagood.runtime.threads import decode_kind


def _tree(root: Path, n: int = 9, broken: tuple[str, ...] = ("shoe/004.png",)) -> Path:
    """Real Fashion-MNIST PNGs in two class folders, with the files ``broken`` damaged."""
    fashion_folder(root, {"coat": 4, "shoe": 7}, n)
    for b in broken:
        (root / b).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


def _all(source, backbone, batch_size, workers, kind):
    out = []
    for idx, batch, failed, stats in decode_batches(source, backbone, 0, batch_size, workers, kind=kind):
        out.append((idx, None if batch is None else batch.copy(), failed, stats))
    return out


@pytest.mark.parametrize("workers", [1, 3])
def test_processes_give_the_threads_batches(tmp_path, backbone, workers):
    """Same indices, bit-identical pixels, the same failures (named reasons) and file stats, batch for batch:
    including a first batch whose every image fails (no shape to learn from) and a batch that loses one image."""
    root = _tree(tmp_path / "imgs", broken=("coat/000.png", "coat/001.png", "coat/002.png", "shoe/004.png"))
    src = data.FolderSource(root)
    want = _all(src, backbone, 3, workers, "threads")
    got = _all(src, backbone, 3, workers, "processes")
    assert want[0][1] is None and len(want[0][2]) == 3  # the all-failed first batch
    assert any(b is not None and len(f) == 1 for _, b, f, _ in want)  # a batch with one failure among decoded rows
    assert len(got) == len(want) == 6
    for (i1, b1, f1, s1), (i2, b2, f2, s2) in zip(want, got, strict=True):
        assert i1 == i2 and f1 == f2 and s1 == s2
        assert (b1 is None) == (b2 is None)
        if b1 is not None:
            assert b1.dtype == b2.dtype == np.float32
            np.testing.assert_array_equal(b1, b2)
    assert "004.png" in src.samples[want[-2][2][0][0]].ident and "corrupt" in want[-2][2][0][1]
    assert mp.active_children() == []


def test_cache_is_identical_with_threads_and_processes(tmp_path, backbone, monkeypatch):
    src = data.FolderSource(_tree(tmp_path / "imgs", n=10))
    readers = {}
    for kind in ("threads", "processes"):
        monkeypatch.setenv("TAGOOD_DECODE", kind)
        readers[kind] = extract_split(src, backbone, tmp_path / kind, split="s", batch_size=4, workers=2,
                                      shard_size=6, progress=False)
    a, b = readers["threads"], readers["processes"]
    assert a.dir.name == b.dir.name  # the decode kind is not part of the key: the same entry
    assert a.indices.tolist() == b.indices.tolist() and len(a) == len(src) - 1
    assert a.failed == b.failed and "004.png" in a.failed[0]["ident"]
    np.testing.assert_array_equal(a.labels, b.labels)
    for f in a.fields:
        np.testing.assert_array_equal(a.array(f), b.array(f))
    shards = sorted(p.name for p in a.dir.glob("*.safetensors"))
    assert shards and shards == sorted(p.name for p in b.dir.glob("*.safetensors"))
    for name in shards:
        assert (a.dir / name).read_bytes() == (b.dir / name).read_bytes()


def test_resume_after_a_stop_with_processes(tmp_path, backbone, monkeypatch):
    """An extraction stopped after two batches (the workers stopped with it) resumes to the same cache."""
    monkeypatch.setenv("TAGOOD_DECODE", "processes")
    src = data.FolderSource(_tree(tmp_path / "imgs", n=8))
    part = extract_split(src, backbone, tmp_path / "c", split="s", batch_size=3, workers=2, shard_size=3,
                         progress=False, max_batches=2)
    assert not part.complete and mp.active_children() == []
    done = extract_split(src, backbone, tmp_path / "c", split="s", batch_size=3, workers=2, shard_size=3, progress=False)
    clean = extract_split(src, backbone, tmp_path / "clean", split="s", batch_size=5, workers=1, progress=False)
    assert done.complete and done.indices.tolist() == clean.indices.tolist()
    np.testing.assert_array_equal(done.array("features"), clean.array("features"))


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("picklable", [True, False])
def test_an_error_in_a_worker_reaches_the_consumer_and_stops_the_workers(tmp_path, backbone, monkeypatch, picklable):
    """The worker's exception is raised in the consumer (one that cannot be pickled: as a RuntimeError with its
    traceback's text)."""
    src = data.FolderSource(_tree(tmp_path / "imgs", n=6, broken=()))
    bad = src.samples[7].ident
    real = backbone.preprocess

    class Local(RuntimeError):  # a class defined in a function does not pickle
        pass

    def preprocess(img):
        if getattr(img, "filename", "") == bad:
            raise (_Boom if picklable else Local)("preprocess bug")
        return real(img)

    monkeypatch.setattr(backbone, "preprocess", preprocess)
    monkeypatch.setattr(src, "load", lambda i: _named(src, i))
    with pytest.raises(_Boom if picklable else RuntimeError, match="preprocess bug") as got:
        _all(src, backbone, 2, 2, "processes")
    assert picklable or ("Local" in str(got.value) and "Traceback" in str(got.value))
    assert mp.active_children() == []


def _named(src, i):
    img = data.FolderSource.load(src, i)
    img.filename = src.samples[i].ident
    return img


def test_a_dead_worker_is_an_error_not_a_hang(tmp_path, backbone, monkeypatch):
    src = data.FolderSource(_tree(tmp_path / "imgs", n=6, broken=()))
    bad = src.samples[5].ident
    real = backbone.preprocess

    def preprocess(img):
        if getattr(img, "filename", "") == bad:
            os.kill(os.getpid(), signal.SIGKILL)  # as the system's out-of-memory killer would
        return real(img)

    monkeypatch.setattr(backbone, "preprocess", preprocess)
    monkeypatch.setattr(src, "load", lambda i: _named(src, i))
    with pytest.raises(DecodeWorkerError, match="exited with code -9"):
        _all(src, backbone, 2, 2, "processes")
    assert mp.active_children() == []


def test_a_consumer_that_stops_early_stops_the_workers(tmp_path, backbone):
    src = data.FolderSource(_tree(tmp_path / "imgs", n=8, broken=()))
    gen = decode_batches(src, backbone, 0, 2, 2, kind="processes")
    next(gen)
    assert len(mp.active_children()) == 2
    gen.close()
    assert mp.active_children() == []


CTRL_C = textwrap.dedent("""
    import os, sys, time
    from tagood import data
    from tagood.backbones.efficientnet import EfficientNetLite0
    from tagood.extract import extract_split
    bb = EfficientNetLite0(cache_dir=sys.argv[3])
    fwd = bb.forward
    def slow(batch):
        time.sleep(0.3)
        return fwd(batch)
    bb.forward = slow
    try:
        extract_split(data.FolderSource(sys.argv[1]), bb, sys.argv[2], split="s", batch_size=2, workers=2,
                      progress=False)
    except KeyboardInterrupt:
        sys.exit(130)
""")


def _children(pid: int) -> set[int]:
    kids: set[int] = set()
    for t in Path(f"/proc/{pid}/task").iterdir():
        kids |= {int(x) for x in (t / "children").read_text().split()}
    return kids


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the process tree from /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_ctrl_c_or_a_kill_leaves_no_worker_behind(tmp_path, backbone, sig):
    """Ctrl-C: the extracting process stops its workers and exits; killed: its workers exit on their own."""
    root = _tree(tmp_path / "imgs", n=12, broken=())
    script = tmp_path / "run.py"
    script.write_text(CTRL_C)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TAGOOD_DECODE": "processes"}
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(tmp_path / "c"),
                             str(backbone.onnx_path().parent)], env=env)
    kids: set[int] = set()
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(kids) < 2:
        kids = _children(proc.pid)
        time.sleep(0.05)
    assert len(kids) == 2, "the decode workers did not start"
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline and _alive(kids):
        time.sleep(0.1)
    assert _alive(kids) == []


def _alive(pids: set[int]) -> list[int]:
    """The processes of ``pids`` still running (not gone, not zombies)."""
    out = []
    for k in pids:
        try:
            state = Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(k)
    return out


def test_decode_kind_setting(monkeypatch):
    monkeypatch.delenv("TAGOOD_DECODE", raising=False)
    assert decode_kind() == "processes"
    monkeypatch.setenv("TAGOOD_DECODE", "Threads")
    assert decode_kind() == "threads"
    monkeypatch.setenv("TAGOOD_DECODE", "fork")
    with pytest.raises(ConfigError, match="TAGOOD_DECODE"):
        decode_kind()


def test_one_batch_is_decoded_without_starting_workers(tmp_path, backbone):
    src = data.FolderSource(_tree(tmp_path / "imgs", n=3, broken=()))
    gen = decode_batches(src, backbone, 0, 8, 2, kind="processes")
    idx, batch, failed, _ = next(gen)
    assert mp.active_children() == [] and idx == list(range(6)) and batch.shape == (6, 3, 224, 224) and failed == []
    assert next(gen, None) is None
