"""Cache reliability with the real backbone and real images: freshness (a replaced file is re-extracted),
integrity (truncated / flipped / deleted shards, damaged or edited manifests), locking (two writers),
commits by count and time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_folders import fashion_folder
from tagood import data
from tagood.cache import CacheError, CacheReader, CacheWriter, EntryLock, cache_key, entry_dir
from tagood.extract import extract_split

FIELDS = ["features", "logits"]


def _extract(src, backbone, cache, **kw):
    kw = {"split": "s", "fields": FIELDS, "batch_size": 4, "progress": False, "commit_rows": 8, **kw}
    return extract_split(src, backbone, cache, **kw)


@pytest.fixture()
def folder(tmp_path):
    return fashion_folder(tmp_path / "imgs", {"coat": 4, "shoe": 7}, 10)


def _counting(backbone, monkeypatch):
    seen: list[int] = []
    fwd = backbone.forward

    def forward(batch):
        seen.append(len(batch))
        return fwd(batch)

    monkeypatch.setattr(backbone, "forward", forward)
    return seen


def test_replaced_file_is_re_extracted_and_only_its_shard(folder, tmp_path, backbone, monkeypatch):
    src = data.FolderSource(folder)
    first = _extract(src, backbone, tmp_path / "c")
    assert len(first.manifest.shards) == 3  # 20 images, a shard every 8
    target = folder / "coat" / "003.png"
    before = first.array("features")[3].copy()
    # replace the file under the same name with another real image (a shoe), keep the name
    (folder / "shoe" / "009.png").replace(target)
    (folder / "shoe" / "009.png").write_bytes((folder / "shoe" / "008.png").read_bytes())
    seen = _counting(backbone, monkeypatch)
    again = _extract(data.FolderSource(folder), backbone, tmp_path / "c")
    assert again.dir == first.dir and again.complete
    assert sum(seen) == 12  # shard 0 (coat/003, 8 images) and shard 2 (shoe/009, 4 images); shard 1 untouched
    monkeypatch.undo()
    clean = _extract(data.FolderSource(folder), backbone, tmp_path / "clean")
    np.testing.assert_array_equal(again.array("features"), clean.array("features"))
    assert not np.allclose(again.array("features")[3], before, atol=1e-2)
    # touching a file without changing it re-extracts its shard too (size + mtime are the check)
    os.utime(folder / "coat" / "000.png", ns=(1, 1))
    seen = _counting(backbone, monkeypatch)
    _extract(data.FolderSource(folder), backbone, tmp_path / "c")
    assert sum(seen) == 8


def _shard_path(r: CacheReader, i: int = 0) -> Path:
    return r.dir / r.manifest.shards[i].file


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "sidecar", "garbage-header"])
def test_damaged_shard_is_detected_before_use_and_repaired(damage, folder, tmp_path, backbone, monkeypatch):
    src = data.FolderSource(folder)
    r = _extract(src, backbone, tmp_path / "c")
    want = r.array("features").copy()
    f = _shard_path(r, 1)
    b = bytearray(f.read_bytes())
    if damage == "truncate":
        f.write_bytes(bytes(b[:-100]))
    elif damage == "flip":
        b[len(b) - 37] ^= 0x40  # inside the data region: header and size stay valid
        f.write_bytes(bytes(b))
    elif damage == "delete":
        f.unlink()
    elif damage == "sidecar":
        side = f.with_suffix(".json")
        d = json.loads(side.read_text())
        d["idents"][0] = d["idents"][1]
        side.write_text(json.dumps(d))
    else:
        b[8:20] = b"{garbage!!!!"
        f.write_bytes(bytes(b))
    problems = CacheReader(r.dir, check_files=False).verify(full=True)
    assert [p.shard for p in problems] == [1]
    if damage == "flip":  # sizes and header are sound: the checksum catches it when the shard is first read
        with pytest.raises(CacheError, match=f"{f.name} is damaged"):
            CacheReader(r.dir).array("features")
    elif damage == "sidecar":
        with pytest.raises(CacheError, match=f"{f.with_suffix('.json').name} is damaged"):
            _ = CacheReader(r.dir).idents
    else:
        with pytest.raises(CacheError, match=f.name):
            CacheReader(r.dir)
    seen = _counting(backbone, monkeypatch)
    fixed = _extract(src, backbone, tmp_path / "c")
    assert sum(seen) == 8  # only the damaged shard is re-extracted
    np.testing.assert_array_equal(fixed.array("features"), want)
    assert CacheReader(r.dir).verify(full=True) == []


def test_manifest_truncated_or_edited(folder, tmp_path, backbone):
    src = data.FolderSource(folder)
    r = _extract(src, backbone, tmp_path / "c")
    want = r.array("features").copy()
    m = r.dir / "manifest.json"
    text = m.read_text()
    m.write_text(text.replace('"count": 8', '"count": 7', 1))  # an edited count
    with pytest.raises(CacheError, match="modified or damaged"):
        CacheReader(r.dir)
    m.write_text(text[: len(text) // 2])  # a truncated manifest: a clean error, no traceback of JSON internals
    with pytest.raises(CacheError, match="corrupt cache manifest .*JSONDecodeError"):
        CacheReader(r.dir)
    again = _extract(src, backbone, tmp_path / "c")  # set aside, extracted again
    np.testing.assert_array_equal(again.array("features"), want)
    assert list(r.dir.glob("manifest.json.damaged-*"))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), shard=st.integers(0, 2))
def test_any_flipped_bit_is_caught(tmp_path_factory, where, bit, shard):
    root = tmp_path_factory.mktemp("c")
    rng = np.random.default_rng(0)
    w = CacheWriter.open(root, "s", cache_key("toy", "w", "t", "d"), n_source=12, shard_size=4)
    w.add(np.arange(12), rng.integers(0, 3, 12), [f"x{i}" for i in range(12)],
          {"features": rng.standard_normal((12, 5)).astype(np.float32)})
    r = w.finish()
    f = _shard_path(r, shard)
    b = bytearray(f.read_bytes())
    b[int(where * len(b))] ^= 1 << bit
    f.write_bytes(bytes(b))
    problems = CacheReader(r.dir, check_files=False).verify(full=True)
    assert [p.shard for p in problems] == [shard]
    with pytest.raises(CacheError, match=f.name):
        CacheReader(r.dir).array("features")


def test_commit_by_count_and_by_time(folder, tmp_path, backbone):
    src = data.FolderSource(folder)
    r = _extract(src, backbone, tmp_path / "a", commit_rows=256, commit_seconds=None)
    assert len(r.manifest.shards) == 1  # 20 images < 256: one shard (the shard_mb limit is far away)
    r = _extract(src, backbone, tmp_path / "b", commit_rows=6)
    assert [s.stop - s.start for s in r.manifest.shards] == [6, 6, 6, 2]
    r = _extract(src, backbone, tmp_path / "c", commit_rows=None, commit_seconds=0.0)
    assert [s.stop - s.start for s in r.manifest.shards] == [4] * 5  # every batch is past the time limit


WRITER = textwrap.dedent("""
    import sys, time, logging
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    from tagood import data
    from tagood.backbones.efficientnet import EfficientNetLite0
    from tagood.extract import extract_split
    bb = EfficientNetLite0(cache_dir=sys.argv[3])
    fwd = bb.forward
    def slow(batch):
        time.sleep(float(sys.argv[4]))
        return fwd(batch)
    bb.forward = slow
    timeout = None if sys.argv[5] == "wait" else float(sys.argv[5])
    r = extract_split(data.FolderSource(sys.argv[1]), bb, sys.argv[2], split="s", batch_size=4, commit_rows=4,
                      fields=["features", "logits"], progress=False, lock_timeout=timeout)
    print("DONE", len(r), len(r.manifest.shards))
""")


@pytest.mark.slow  # three writer processes, the first held back 20 s: ~45 s on 2 busy cores
def test_two_writers_one_entry(folder, tmp_path, backbone):
    script = tmp_path / "w.py"
    script.write_text(WRITER)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    onnx = str(backbone.onnx_path().parent)

    def start(delay: str, timeout: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(script), str(folder), str(cache), onnx, delay, timeout], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    a = start("4", "wait")  # 5 batches, 4 s each: long enough for b and c to start meanwhile
    deadline = time.time() + 120
    while time.time() < deadline and not list(cache.glob("*/manifest.json")):
        time.sleep(0.05)
    assert a.poll() is None
    b = start("0", "0")  # does not wait: a clear error naming the holder
    c = start("0", "wait")  # waits, then finds the entry done (does no work)
    out_b = b.communicate(timeout=120)
    out_a, out_c = a.communicate(timeout=300), c.communicate(timeout=300)
    assert b.returncode == 1 and "is being written by pid" in out_b[1] and str(a.pid) in out_b[1]
    assert a.returncode == 0 and "DONE 20 5" in out_a[0], out_a[1][-2000:]
    assert c.returncode == 0 and "DONE 20 5" in out_c[0] and "waiting for it" in out_c[1], out_c[1][-2000:]
    assert "cache hit" in out_c[1]
    r = _extract(data.FolderSource(folder), backbone, cache, commit_rows=4)
    assert r.verify(full=True) == [] and r.indices.tolist() == list(range(20))


def test_lock_in_process_and_rm_refuses_while_locked(tmp_path):
    from tagood.cache import remove_entry

    key = cache_key("toy", "w", "t", "d")
    w = CacheWriter.open(tmp_path, "s", key, n_source=3)
    with pytest.raises(CacheError, match="already writes"):
        CacheWriter.open(tmp_path, "s", key, n_source=3)
    d = entry_dir(tmp_path, "s", key)
    code = "import sys; from tagood.cache import remove_entry; remove_entry(sys.argv[1])"
    out = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 1 and "is being written by pid" in out.stderr and d.exists()
    w.close()
    remove_entry(d)
    assert not d.exists()
    with EntryLock(tmp_path / "x", 0) as lk:
        assert lk.held and "pid" in lk.holder()


# -- issue 23 (4): a deleted sidecar, a broken lock, an unreadable entry ------------------------------------------
def _cli(args):
    from typer.testing import CliRunner

    from tagood.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)


def test_deleted_sidecar_is_repaired_by_verify_and_by_a_rerun(folder, tmp_path, tagood_home):
    cache = tmp_path / "c"
    args = ["extract", folder, "--cache", cache, "--fields", "features", "--commit-every", "8"]
    assert _cli(args).exit_code == 0
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    want = CacheReader(entry).array("features").copy()
    (entry / "shard-00000.json").unlink()
    r = _cli(["cache", "verify", "--cache", cache])
    assert r.exit_code == 1 and "shard-00000.json: missing" in r.output, r.output
    r = _cli(["cache", "verify", "--repair", "--cache", cache])
    assert r.exit_code == 0 and "repaired" in r.output, r.output
    assert _cli(["cache", "verify", "--cache", cache]).exit_code == 0
    np.testing.assert_array_equal(CacheReader(entry).array("features"), want)
    side = entry / CacheReader(entry).manifest.shards[1].sidecar
    side.unlink()  # a rerun (extract, fit, score, bench) re-extracts that shard too
    r = _cli(args)
    assert r.exit_code == 0 and "20 samples cached" in r.output, r.output
    reader = CacheReader(entry)
    assert reader.verify(full=True) == [] and len(reader.idents) == 20
    np.testing.assert_array_equal(reader.array("features"), want)


def test_lock_that_is_a_directory_is_reported_and_repaired(folder, tmp_path, tagood_home):
    cache = tmp_path / "c"
    args = ["extract", folder, "--cache", cache, "--fields", "features"]
    assert _cli(args).exit_code == 0
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    (entry / ".lock").unlink()
    (entry / ".lock").mkdir()
    r = _cli(args)
    assert r.exit_code == 2 and ".lock is a directory, not the entry's lock file" in r.output, r.output
    r = _cli(["cache", "verify", "--cache", cache])
    assert r.exit_code == 1 and ".lock is a directory" in r.output and "ok" not in r.output, r.output
    r = _cli(["cache", "ls", "--cache", cache])
    assert r.exit_code == 0 and "lock file broken" in r.output
    r = _cli(["cache", "verify", "--repair", "--cache", cache])
    assert r.exit_code == 0 and "removed the broken lock" in r.output and ": ok" in r.output, r.output
    assert _cli(args).exit_code == 0


def test_symlinked_lock_is_never_followed(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    d = tmp_path / "entry"
    d.mkdir()
    (d / ".lock").symlink_to(target)
    with pytest.raises(CacheError, match="not a regular file"):
        EntryLock(d, 0).acquire()
    assert target.read_text() == "keep me"  # the lock truncates and writes its file: never through a link


def test_ls_and_verify_go_on_past_an_unreadable_entry(folder, tmp_path, tagood_home):
    from unprivileged import tagood

    cache = tmp_path / "c"
    assert _cli(["extract", folder, "--cache", cache, "--fields", "features", "--split", "a"]).exit_code == 0
    assert _cli(["extract", folder, "--cache", cache, "--fields", "features", "--split", "b"]).exit_code == 0
    a, b = sorted(p for p in cache.iterdir() if p.is_dir())
    os.chmod(a, 0)
    try:
        r = tagood(["cache", "ls", "--cache", cache])
        assert r.returncode == 0 and b.name in r.stdout and "complete" in r.stdout, r.stdout + r.stderr
        assert a.name in r.stdout and "Permission denied" in r.stdout.replace("\n", "")
        r = tagood(["cache", "verify", "--cache", cache])
        assert r.returncode == 1 and f"{b.name}: ok" in r.stdout, r.stdout + r.stderr
        assert "Permission denied" in r.stdout and "1 entry damaged" in r.stdout
    finally:
        os.chmod(a, 0o755)
