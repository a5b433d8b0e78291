"""Benchmark: cost of the cache's freshness check vs the extraction it guards (issue 12, deliverable 1).

Every extraction that finds its cache entry (a cache hit or a resume) stats each source file again and
compares ``[size, mtime_ns]`` with what the entry's shards recorded (``tagood.extract.local._repair``:
:func:`tagood.cache.file_stat` over the source, then :meth:`tagood.cache.CacheReader.changed_shards`);
a file that changed has its shard re-extracted. This measures, in one run:

* **check**: that stat + compare pass over ``--n`` files (default 100,000) laid out as an image folder
  (100 class folders, every file a real PNG), against an entry of ``--n`` samples in shards of 256 (the
  CLI's default commit size), written through :class:`tagood.cache.CacheWriter` with the stats recorded.
  Best of ``--repeats`` runs; the inode cache is warm after the first (cold numbers on a network file
  system are larger).
* **extraction**: the full pipeline (:func:`tagood.extract.extract_split`: decode, resize, EfficientNet-Lite0
  forward with every output, fp16 cache write) over ``--images`` real photos (crops of scikit-learn's
  two sample photos saved as JPEG, ~400x500 like ImageNet's), after a warm-up run so the one-off ONNX
  export is not counted.

Prints per-file / per-image times, the extrapolation to ImageNet-1K train (1,281,167 images) and, last,
the ratio check time / extraction time (the check must stay well under 1).

    python benchmarks/bench_cache_freshness.py [--n 100000] [--images 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_image

from tagood import data
from tagood.backbones.efficientnet import EfficientNetLite0
from tagood.cache import CacheReader, CacheWriter, cache_key, file_stat
from tagood.extract import extract_split

IMAGENET_TRAIN = 1_281_167


def _png_bytes() -> bytes:
    """One real 28x28 scikit-learn digit as PNG bytes (the content does not matter to a stat)."""
    from sklearn.datasets import load_digits

    img = (load_digits().images[0] * 16).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).resize((28, 28)).save(buf, format="PNG")
    return buf.getvalue()


def make_stat_folder(root: Path, n: int, classes: int = 100) -> list[str]:
    payload = _png_bytes()
    files: list[str] = []
    per = -(-n // classes)
    for c in range(classes):
        d = root / f"c{c:03d}"
        d.mkdir(parents=True)
        for j in range(min(per, n - len(files))):
            p = d / f"{j:06d}.png"
            p.write_bytes(payload)
            files.append(str(p))
    return files


def build_entry(root: Path, files: list[str]) -> Path:
    """An entry of len(files) samples (one 4-d feature each) in shards of 256, with the files' stats."""
    n = len(files)
    stats = [file_stat(f) for f in files]
    w = CacheWriter.open(root, "fresh", cache_key("bench", "w", "t", f"n{n}"), n_source=n, shard_size=256)
    feats = np.zeros((n, 4), np.float32)
    for a in range(0, n, 4096):
        b = min(n, a + 4096)
        w.add(np.arange(a, b), np.zeros(b - a), files[a:b], {"features": feats[a:b]}, stats=stats[a:b])
    return w.finish().dir


def time_check(entry: Path, files: list[str], repeats: int) -> tuple[float, float, int]:
    """(stat-only seconds, stat + compare seconds, shards), best of ``repeats``."""
    best_stat = best_check = float("inf")
    shards = 0
    for _ in range(repeats):
        t = time.perf_counter()
        now = [file_stat(f) for f in files]
        best_stat = min(best_stat, time.perf_counter() - t)
        t = time.perf_counter()
        now = [file_stat(f) for f in files]
        reader = CacheReader(entry, check_files=False)
        changed = reader.changed_shards(now)
        best_check = min(best_check, time.perf_counter() - t)
        shards = len(reader.manifest.shards)
        if changed:
            raise RuntimeError(f"freshness check reported changes on an untouched folder: {changed}")
    return best_stat, best_check, shards


def make_photos(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    photos = [load_sample_image(p) for p in ("china.jpg", "flower.jpg")]
    for c in range(4):
        (root / f"c{c}").mkdir(parents=True)
    for i in range(n):
        ph = photos[i % 2]
        h, w = int(rng.integers(300, 427)), int(rng.integers(380, 640))
        y, x = int(rng.integers(0, ph.shape[0] - h + 1)), int(rng.integers(0, ph.shape[1] - w + 1))
        Image.fromarray(ph[y:y + h, x:x + w]).save(root / f"c{i % 4}" / f"{i:05d}.jpg", quality=90)


def time_extraction(root: Path, cache: Path, n_images: int) -> float:
    """Seconds per image of the full extraction pipeline (after a warm-up that exports the ONNX model)."""
    make_photos(root, n_images)
    bb = EfficientNetLite0()
    src = data.FolderSource(root)
    warm = data.subsample(src, min(32, len(src)), seed=1)
    extract_split(warm, bb, cache / "warm", split="warm")
    t = time.perf_counter()
    reader = extract_split(src, bb, cache / "timed", split="timed")
    dt = time.perf_counter() - t
    if len(reader) != n_images:
        raise RuntimeError(f"extracted {len(reader)} of {n_images} images")
    return dt / n_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="files in the stat pass")
    ap.add_argument("--images", type=int, default=256, help="real photos in the timed extraction")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tagood-fresh-"))
    try:
        t = time.perf_counter()
        files = make_stat_folder(tmp / "files", args.n)
        entry = build_entry(tmp / "cache", files)
        print(f"built {args.n} files and their cache entry in {time.perf_counter() - t:.1f}s ({tmp}; cores: {os.cpu_count()})")
        t_stat, t_check, shards = time_check(entry, files, args.repeats)
        per_img = time_extraction(tmp / "photos", tmp / "cache", args.images)
        per_file = t_check / args.n
        print(f"stat pass:           {t_stat:.2f} s for {args.n} files ({1e6 * t_stat / args.n:.1f} us/file)")
        print(f"stat + compare:      {t_check:.2f} s with {shards} shards ({1e6 * per_file:.1f} us/file)")
        print(f"extraction:          {1e3 * per_img:.1f} ms/image (EfficientNet-Lite0, CPU, {args.images} photos, all outputs)")
        print(f"ImageNet-1K train:   check ~{per_file * IMAGENET_TRAIN:.0f} s vs extraction "
              f"~{per_img * IMAGENET_TRAIN / 3600:.1f} h")
        print(f"ratio check / extraction per image: {per_file / per_img:.5f}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
