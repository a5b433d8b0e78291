"""`tagood extract` SIGKILLed several times during a 300-image extraction resumes each time where the
last committed shard ended, and its final cache holds exactly what a clean run computes; with its default settings
a kill loses at most the last few seconds of work (the first shard is committed within seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from image_folders import fashion_folder
from tagood import data
from tagood.cache import CacheReader, Manifest
from tagood.extract import extract_split


def _manifest(cache):
    ms = list(cache.glob("*/manifest.json"))
    return Manifest.load(ms[0]).to_json() if ms else None  # manifest.json + its commit log


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


#: ``tagood extract`` with every default, on a slow backbone (RAM or CLIP on a CPU: seconds per batch of 64), where a
#: shard every 256 images alone would commit nothing for the first 4 batches (16 s)
SLOW_CLI = textwrap.dedent("""
    import sys, time
    from tagood.backbones.efficientnet import EfficientNetLite0
    fwd = EfficientNetLite0.forward
    def slow(self, batch):
        time.sleep(4.0)
        return fwd(self, batch)
    EfficientNetLite0.forward = slow
    from tagood.cli.main import app
    sys.argv = ["tagood", *sys.argv[1:]]
    app()
""")


@pytest.mark.slow  # two CLI starts, 14 s of a slowed extraction, a real one of 360 images: ~2 min on 2 busy cores
def test_kill_with_default_settings_keeps_all_but_the_last_seconds(tmp_path, backbone):
    root = fashion_folder(tmp_path / "imgs", {"top": 0, "bag": 8, "boot": 9}, 120)  # 360 real images: 6 batches of 64
    cache = tmp_path / "cache"
    script = tmp_path / "slow.py"
    script.write_text(SLOW_CLI)
    cmd = [sys.executable, str(script), "extract", str(root), "--cache", str(cache), "--fields", "features"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "TAGOOD_HOME": str(backbone.onnx_path().parent.parent)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _manifest(cache) is None:
        time.sleep(0.01)
    t_open = time.time()  # the writer opened the entry: the extraction starts now
    first = None
    while time.time() < t_open + 14 and proc.poll() is None:
        m = _manifest(cache)
        if first is None and m and m["shards"]:
            first = time.time() - t_open
        time.sleep(0.02)
    assert proc.poll() is None, "finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    m = _manifest(cache)
    assert first is not None and first <= 12.0, first  # FIRST_COMMIT_SECONDS, one slowed batch (4 s), model load
    assert not m["complete"] and m["shards"][-1]["stop"] >= 64  # at 14 s (~3 batches done, < 256 images) work is kept
    done = subprocess.run([sys.executable, "-m", "tagood", "extract", str(root), "--cache", str(cache), "--fields",
                           "features"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "360 samples cached" in done.stdout, done.stdout + done.stderr
    assert f"resuming {next(p for p in cache.iterdir() if p.is_dir())} at sample {m['shards'][-1]['stop']}" in done.stderr \
        + done.stdout
    r = CacheReader(next(p for p in cache.iterdir() if p.is_dir()))
    assert r.complete and r.verify(full=True) == [] and r.indices.tolist() == list(range(360))
