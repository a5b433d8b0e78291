"""Extraction into the cache with the real backbone: kill-and-resume, corrupt files, cache hits, image streams."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tagood import data
from tagood.cache import Manifest
from tagood.core.images import ImageStream
from tagood.extract import entry_images, extract_split


def _image_tree(root: Path, n_per: int = 12) -> Path:
    """Real Fashion-MNIST items as PNG files in two class folders, plus one corrupt file."""
    src = data.fashion_mnist("test")
    for c, cls in enumerate(("coat", "shoe")):
        d = root / cls
        d.mkdir(parents=True)
        idx = [i for i, s in enumerate(src.samples) if s.label == (4 if c == 0 else 7)][:n_per]
        for j, i in enumerate(idx):
            src.load(i).save(d / f"{j:03d}.png")
    (root / "shoe" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


SCRIPT = textwrap.dedent("""
    import sys, time
    from tagood import data
    from tagood.backbones.efficientnet import EfficientNetLite0
    from tagood.extract import extract_split
    bb = EfficientNetLite0(cache_dir=sys.argv[3])
    fwd = bb.forward
    def slow(batch):
        time.sleep(0.4)
        return fwd(batch)
    bb.forward = slow
    extract_split(data.FolderSource(sys.argv[1]), bb, sys.argv[2], split="s", batch_size=2, shard_size=2,
                  fields=["features", "tokens"], progress=False)
""")


def test_killed_extraction_resumes_without_loss_or_duplicates(tmp_path, backbone):
    root = _image_tree(tmp_path / "imgs")
    cache = tmp_path / "cache"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(script), str(root), str(cache), str(backbone.onnx_path().parent)], env=env)
    deadline = time.time() + 120
    shards = 0
    while time.time() < deadline and proc.poll() is None:
        ms = list(cache.glob("*/manifest.json"))
        if ms:
            shards = len(Manifest.load(ms[0]).shards)  # manifest.json + its commit log
            if shards >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "extraction finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = Manifest.load(next(cache.glob("*/manifest.json"))).to_json()
    assert not manifest["complete"] and 3 <= len(manifest["shards"]) < 12

    src = data.FolderSource(root)
    r = extract_split(src, backbone, cache, split="s", batch_size=2, shard_size=2, fields=["features", "tokens"], progress=False)
    bad = [i for i, s in enumerate(src.samples) if s.ident.endswith("shoe/005.png")]
    assert r.complete
    assert r.indices.tolist() == [i for i in range(len(src)) if i not in bad]  # none lost, none duplicated
    assert [f["index"] for f in r.failed] == bad and "005.png" in r.failed[0]["ident"]
    clean = extract_split(src, backbone, tmp_path / "clean", split="s", batch_size=8, fields=["features", "tokens"],
                          progress=False)
    np.testing.assert_allclose(r.array("features"), clean.array("features"), rtol=0, atol=1e-3)
    np.testing.assert_array_equal(r.labels, clean.labels)


def test_finished_extraction_is_not_recomputed(tmp_path, backbone, monkeypatch):
    root = _image_tree(tmp_path / "imgs", n_per=3)
    src = data.FolderSource(root)
    first = extract_split(src, backbone, tmp_path / "c", split="s", fields=["features"], progress=False)
    calls = []
    monkeypatch.setattr(backbone, "forward", lambda b: calls.append(1))
    again = extract_split(src, backbone, tmp_path / "c", split="s", fields=["features"], progress=False)
    assert calls == [] and again.dir == first.dir and len(again) == len(first)
    # other options -> another entry (never silently reused)
    monkeypatch.undo()
    other = extract_split(src, backbone, tmp_path / "c", split="s", fields=["features", "block_norms"], progress=False)
    assert other.dir != first.dir


def test_entry_images_align_with_cache(tmp_path, backbone):
    root = _image_tree(tmp_path / "imgs", n_per=3)
    src = data.FolderSource(root)
    r = extract_split(src, backbone, tmp_path / "c", split="s", fields=["features"], progress=False)
    stream = entry_images(r, src, backbone)
    assert isinstance(stream, ImageStream) and stream.workers >= 1
    batches = list(stream.batches(4))
    assert sum(len(b) for b in batches) == len(r) == len(src) - 1  # the corrupt file is not in the entry
    feats = backbone.forward(np.concatenate(batches)).features
    np.testing.assert_allclose(feats, r.array("features"), atol=1e-2)


def test_one_image_stream_type_in_memory_and_decoded(tmp_path, backbone):
    """An ImageStream decoded from files (in a decode pool one batch ahead, or in the consumer's thread) and one
    over the same images held in memory give the same batches, whole and by part (a rank's share)."""
    src = data.FolderSource(_image_tree(tmp_path / "imgs", n_per=4))
    idx = np.array([i for i in range(len(src)) if not src.samples[i].ident.endswith("shoe/005.png")])
    pooled = ImageStream(source=src, indices=idx, preprocess=backbone.preprocess, workers=2)
    inline = ImageStream(source=src, indices=idx, preprocess=backbone.preprocess, workers=0)
    want = np.stack([backbone.preprocess(src.load(int(i))) for i in idx])
    memory = ImageStream(want.astype(np.float64))
    assert memory.images.dtype == np.float32 and memory.source is None and pooled.source is src
    for s in (pooled, inline, memory):
        got = list(s.batches(3))
        assert len(s) == len(idx) == 8 and [len(b) for b in got] == [3, 3, 2]
        np.testing.assert_array_equal(np.concatenate(got), want)
        part = s.part(2, 6)
        assert isinstance(part, ImageStream) and len(part) == 4 and part.workers == s.workers
        np.testing.assert_array_equal(np.concatenate(list(part.batches(3))), want[2:6])
    assert list(ImageStream(source=src, indices=idx[:0], preprocess=backbone.preprocess).batches(4)) == []
    with pytest.raises(ValueError, match="either images"):
        ImageStream(want, source=src, indices=idx, preprocess=backbone.preprocess)
    with pytest.raises(ValueError, match="either images"):
        ImageStream()
    with pytest.raises(ValueError, match="preprocess="):
        ImageStream(source=src, indices=idx)


def test_empty_source_is_an_error(tmp_path, backbone):
    with pytest.raises(data.DataSourceError):
        data.FolderSource(tmp_path)
