"""The cache manifest's commit log: a commit appends one line (its cost does not grow with the shards listed), readers
apply the log, a torn last line is ignored, a damaged earlier line is an error, and finishing compacts the log."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from tagood.cache import CacheError, CacheReader, CacheWriter, Manifest
from tagood.cache.manifest import MANIFEST, MANIFEST_LOG

KEY = {"backbone": "test", "fields": ["features"]}


def _add(w: CacheWriter, i: int) -> None:
    w.add(np.array([i]), np.array([i % 3]), [f"s{i}"], {"features": np.full((1, 4), i, np.float32)}, stats=[None])


def _manifest_bytes_written(d, before: tuple[int, int, int] | None) -> tuple[int, tuple[int, int, int]]:
    """Bytes the last commit wrote to the manifest: manifest.json's size when it was replaced, plus the log's growth."""
    st = os.stat(d / MANIFEST)
    log_size = (d / MANIFEST_LOG).stat().st_size if (d / MANIFEST_LOG).exists() else 0
    now = (st.st_ino, st.st_mtime_ns, log_size)
    if before is None:
        return 0, now
    replaced = (st.st_ino, st.st_mtime_ns) != before[:2]
    return (st.st_size if replaced else 0) + max(0, log_size - before[2]), now


def test_commit_cost_does_not_grow_with_the_number_of_shards(tmp_path):
    n = 400
    w = CacheWriter.open(tmp_path, "s", KEY, n_source=n, shard_size=1)
    costs, state = [], None
    for i in range(n):
        _add(w, i)  # shard_size=1: every add commits a shard
        cost, state = _manifest_bytes_written(w.dir, state)
        costs.append(cost)
    assert len(w.manifest.shards) == n
    early, late = np.mean(costs[5:15]), np.mean(costs[-10:])
    # one log line per commit: the late lines are longer by a few digits only (start/stop/seq), never by the shard list
    assert 0 < early and late <= early + 16, (early, late)
    assert max(costs[1:]) < 2000
    assert w.manifest_bytes < 2000 * n  # the writer's own count agrees: no whole-manifest rewrite per commit
    # a reader sees every committed shard before the entry is finished (manifest.json + the log)
    r = CacheReader(w.dir)
    assert not r.complete and len(r.manifest.shards) == n
    assert json.loads((w.dir / MANIFEST).read_text())["shards"] == []  # the base manifest was never rewritten
    done = w.finish()
    assert done.complete and not (w.dir / MANIFEST_LOG).exists()  # compacted into manifest.json
    assert len(json.loads((w.dir / MANIFEST).read_text())["shards"]) == n
    np.testing.assert_array_equal(done.array("features")[:, 0], np.arange(n, dtype=np.float32))


def test_torn_last_line_is_ignored_and_resume_compacts(tmp_path):
    w = CacheWriter.open(tmp_path, "s", KEY, n_source=10, shard_size=2)
    for i in range(6):
        _add(w, i)
    w.close()  # killed: no finish
    d = w.dir
    log = d / MANIFEST_LOG
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    log.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # the third commit torn mid-line
    m = Manifest.load(d / MANIFEST)
    assert [(s.start, s.stop) for s in m.shards] == [(0, 2), (2, 4)]  # the torn commit does not count
    assert (d / "shard-00002.safetensors").exists()
    w2 = CacheWriter.open(tmp_path, "s", KEY, n_source=10, shard_size=2)  # resume: compacts, drops the unlisted shard
    assert not log.exists() and not (d / "shard-00002.safetensors").exists()
    assert w2.next_index == 4
    for i in range(4, 10):
        _add(w2, i)
    r = w2.finish()
    assert r.indices.tolist() == list(range(10)) and r.verify(full=True) == []


def test_damaged_line_before_the_last_is_an_error(tmp_path):
    w = CacheWriter.open(tmp_path, "s", KEY, n_source=10, shard_size=2)
    for i in range(6):
        _add(w, i)
    w.close()
    log = w.dir / MANIFEST_LOG
    lines = log.read_bytes().splitlines(keepends=True)
    edited = json.loads(lines[0])
    edited["shards"][0]["count"] = 1  # an edit the line's checksum catches
    log.write_bytes((json.dumps(edited) + "\n").encode() + b"".join(lines[1:]))
    with pytest.raises(CacheError, match=r"manifest\.log is damaged at line 1 \(checksum mismatch\)"):
        Manifest.load(w.dir / MANIFEST)
    with pytest.raises(CacheError, match="manifest.log"):
        CacheReader(w.dir)
    # the same edit in the last line: a torn commit, ignored
    log.write_bytes(b"".join(lines[:2]) + (json.dumps({**json.loads(lines[2]), "seq": 7}) + "\n").encode())
    assert len(Manifest.load(w.dir / MANIFEST).shards) == 2


def test_a_log_left_by_an_interrupted_compaction_is_ignored(tmp_path):
    w = CacheWriter.open(tmp_path, "s", KEY, n_source=6, shard_size=2)
    for i in range(6):
        _add(w, i)
    saved = tmp_path / "saved.log"
    shutil.copy(w.dir / MANIFEST_LOG, saved)
    w.finish()
    shutil.copy(saved, w.dir / MANIFEST_LOG)  # killed after manifest.json was replaced, before the log was removed
    m = Manifest.load(w.dir / MANIFEST)
    assert m.complete and [(s.start, s.stop) for s in m.shards] == [(0, 2), (2, 4), (4, 6)]  # not listed twice
    assert CacheReader(w.dir).indices.tolist() == list(range(6))
