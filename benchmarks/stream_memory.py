"""Benchmark: peak memory of TagOOD training from a streamed cache vs the in-memory path.

A synthetic cache entry in the RAM tagger's layout (145 tokens per image, ``--dim`` wide, fp16,
top-10 tag maps, ``--tags`` tag probabilities) is written once with the real cache writer. Then,
each in a fresh subprocess, the same TagOOD detector (preset ``small``, 1 epoch) is fitted on it
(a) with the split loaded into memory (``CacheReader.to_featureset``), the in-memory baseline, and
(b) streamed shard by shard (``stream=heavy fields``), the object tokens going to an on-disk store.
Both print their peak anonymous resident memory (``RssAnon``, sampled every 10 ms: the memory
that cannot be given back; memory-mapped cache pages are file-backed and reclaimable, so they are
not counted) and a checksum of the learnt centres, which must agree. Prints the ratio in-memory
peak / streamed peak last (higher = streaming saves more; it grows with the split, since the
streamed peak is one shard plus the training step's own working memory).

    python benchmarks/stream_memory.py [--n 8000] [--dim 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, threading, time
import numpy as np

def anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0

peak = [anon_kb()]
def sample():
    while True:
        peak[0] = max(peak[0], anon_kb())
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
from tagood.cache import CacheReader, HEAVY_FIELDS
from tagood.detectors import create
from tagood.core.context import Context
entry, mode, work = sys.argv[1], sys.argv[2], sys.argv[3]
reader = CacheReader(entry)
fields = ["tokens", "tag_probs", "tag_attention"]
fs = reader.to_featureset(fields, stream=fields if mode == "stream" else ())
det = create("tagood[epochs=1,per_class=1]")
ctx = Context(class_names=[f"c{i}" for i in range(int(fs.labels.max()) + 1)], seed=0)
ctx.work_dir = work
det.fit(fs, ctx)
time.sleep(0.05)
print(json.dumps({"mode": mode, "peak_mb": peak[0] / 1024, "centres": float(np.abs(det.centres).sum())}))
"""


def write_cache(root: Path, n: int, dim: int, n_tags: int, classes: int, shard: int, seed: int = 0) -> Path:
    from tagood.cache import CacheWriter

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    w = CacheWriter.open(root, "synthetic", {"bench": "stream_memory", "n": n, "dim": dim}, n_source=n, shard_size=shard)
    for a in range(0, n, 256):
        b = min(a + 256, n)
        y = rng.integers(0, classes, b - a)
        tokens = rng.normal(size=(b - a, 145, dim)).astype(np.float32) + centres[y][:, None]
        probs = rng.random((b - a, n_tags)).astype(np.float32) * 0.5
        probs[np.arange(b - a), y] = 0.99  # tag y names class y
        ids = np.argsort(-probs, axis=1)[:, :10]
        maps = rng.random((b - a, 10, 145)).astype(np.float32)
        w.add(np.arange(a, b), y, [str(i) for i in range(a, b)],
              {"tokens": tokens, "tag_probs": probs, "tag_ids": ids, "tag_attention": maps})
    return w.finish().dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=8000, help="images in the synthetic split")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--shard", type=int, default=500, help="images per cache shard")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        entry = write_cache(Path(tmp) / "cache", args.n, args.dim, args.tags, classes=10, shard=args.shard)
        disk = sum(f.stat().st_size for f in entry.glob("*.safetensors")) / 2**20
        print(f"synthetic split: {args.n} images x 145 tokens x {args.dim}, {args.tags} tags; {disk:.0f} MiB of fp16 shards")
        res = {}
        for mode in ("memory", "stream"):
            out = subprocess.run([sys.executable, "-c", CHILD, str(entry), mode, str(Path(tmp) / "work")],
                                 capture_output=True, text=True, check=True)
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{mode:>7}: peak anonymous memory {res[mode]['peak_mb']:8.0f} MiB   "
                  f"centres checksum {res[mode]['centres']:.6f}")
        if not np.isclose(res["memory"]["centres"], res["stream"]["centres"], rtol=1e-5):
            raise SystemExit("streamed and in-memory training disagree")
        print(f"in_memory_vs_streamed_peak_memory: {res['memory']['peak_mb'] / res['stream']['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
