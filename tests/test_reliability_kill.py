"""`tagood extract` SIGKILLed several times during a 300-image extraction resumes each time where the
last committed shard ended, and its final cache holds exactly what a clean run computes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from image_folders import fashion_folder
from tagood import data
from tagood.cache import CacheReader
from tagood.extract import extract_split


def _manifest(cache):
    ms = list(cache.glob("*/manifest.json"))
    return json.loads(ms[0].read_text()) if ms else None


@pytest.mark.slow  # five CLI starts (torch + ONNX model load each): ~90 s on 2 busy cores
def test_cli_extract_killed_repeatedly_resumes_and_equals_a_clean_run(tmp_path, backbone):
    root = fashion_folder(tmp_path / "imgs", {"top": 0, "bag": 8, "boot": 9}, 100)  # 300 real images
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "tagood.cli.main", "extract", str(root), "--cache", str(cache), "--split", "s",
           "--fields", "features,logits", "--batch-size", "10", "--commit-every", "20"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    progress: list[int] = []  # samples covered by committed shards at each kill
    kills = 0
    for _ in range(4):
        before = (_manifest(cache) or {"shards": []})["shards"]
        covered = before[-1]["stop"] if before else 0
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            m = _manifest(cache)
            if m and m["shards"] and m["shards"][-1]["stop"] >= covered + 40:  # two more shards since the last kill
                break
            time.sleep(0.01)
        if proc.poll() is not None:  # finished before we could kill it
            break
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0]
        kills += 1
        m = _manifest(cache)
        assert not m["complete"]
        progress.append(m["shards"][-1]["stop"])
        if kills > 1:
            assert "resuming" in out, out[-2000:]
    assert kills >= 3, f"only {kills} kills before the extraction finished"
    assert progress == sorted(progress) and len(set(progress)) == len(progress)  # resumed, never restarted
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "300 samples cached" in done.stdout, done.stdout + done.stderr
    r = CacheReader(next(p for p in cache.iterdir() if p.is_dir()))
    assert r.complete and r.verify(full=True) == []
    clean = extract_split(data.FolderSource(root), backbone, tmp_path / "clean", split="s", fields=["features", "logits"],
                          batch_size=10, commit_rows=20, progress=False)
    assert r.indices.tolist() == clean.indices.tolist() == list(range(300))
    assert r.idents == clean.idents
    np.testing.assert_array_equal(r.labels, clean.labels)
    np.testing.assert_array_equal(r.array("features"), clean.array("features"))
    np.testing.assert_array_equal(r.array("logits"), clean.array("logits"))
    # and no stray files: only listed shards, their sidecars, the manifest and the lock file
    listed = {s.file for s in r.manifest.shards} | {s.sidecar for s in r.manifest.shards}
    assert {f.name for f in r.dir.iterdir()} == listed | {"manifest.json", ".lock"}
