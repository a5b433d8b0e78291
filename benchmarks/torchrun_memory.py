"""Benchmark: each torchrun rank's peak memory for the IND head and the classic detectors, against one process.

Runs the synthetic rehearsal's benchmark (``benchmarks/scale_rehearsal.py``'s config: the synthetic RAM-shaped
tagger, ImageNet-1K's counts times ``--scale``, 145 tokens, 4,585 tags, token width ``--width``) with the classic
detectors (``--methods``; no TagOOD projector: it trains data-parallel on every rank by design) twice on one shared
cache: in one process, then under ``torchrun --nproc-per-node 2`` (gloo, CPU). Each process runs
:func:`tagood.bench.runner.run` and writes what the run recorded of itself: its peak resident memory per stage
(``RunState.peak_rss``: the kernel's high-water mark, reset before each stage, so a stage's figure is its own
peak; file pages of the memory-mapped cache count too), its fit timings and the fields of each split it loaded.

Under torchrun the IND head and these detectors are fitted on rank 0 and their state broadcast
(:func:`tagood.detectors.base.fit_once`), so rank 1 neither loads the training split's pooled features nor fits:
its ``head`` and detector figures should sit well below rank 0's and the single process's, which hold the
training split. The table prints, per stage, single process / rank 0 / rank 1 in MiB, then the peak over the head
and detector stages and the ratio rank 1 / single process of that peak, last. The first run extracts the cache, so
its ``extract`` stage includes extraction and the torchrun ranks' only the loading of the splits.

    python benchmarks/torchrun_memory.py --scale 0.01 --width 32 [--json docs/results/scale/torchrun-memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_rehearsal import counts, write_config  # noqa: E402  (the rehearsal's config, reused as is)

DEFAULT_METHODS = ("msp", "energy", "knn", "mahalanobis", "vim")

WORKER = textwrap.dedent("""
    import json, os, sys, time
    from tagood.bench.config import load_config
    from tagood.bench.runner import run
    from tagood.runtime import distributed, memory

    config, cache, out, methods = sys.argv[1:5]
    t0 = time.perf_counter()
    results, state = run(load_config(config), out_dir=None, cache_root=cache, methods=methods.split(","), progress=False)
    w = distributed.world()
    rows = {(r["method"], r["ood"]): r["auroc"] for r in results["rows"]}
    json.dump({"rank": w.rank, "world": w.size, "pid": os.getpid(), "wall_s": time.perf_counter() - t0,
               "peak_rss": state.peak_rss, "rss_end": memory.rss(), "timings": state.timings,
               "loaded_fields": state.loaded_fields, "errors": state.errors,
               "auroc": {f"{m}|{o}": v for (m, o), v in rows.items()}},
              open(f"{out}.rank{w.rank}.json", "w"), indent=1)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], log: Path, env: dict[str, str]) -> None:
    with open(log, "ab") as lf:
        rc = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed (exit {rc}); the end of {log}:\n{log.read_text(errors='replace')[-3000:]}")


def measure(scale: float, width: int, methods: list[str], work: Path, nproc: int = 2) -> dict[str, Any]:
    """One process, then ``nproc`` torchrun ranks, on one cache; returns every process's record."""
    cfg = work / "bench.toml"
    sizes = write_config(cfg, scale, width)
    script = work / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", TAGOOD_DIST_TIMEOUT="3600")
    log = work / "run.log"
    args = [str(cfg), str(work / "cache"), "", ",".join(methods)]
    t = time.perf_counter()
    _run([sys.executable, str(script), *args[:2], str(work / "one"), args[3]], log, env)
    one_s = time.perf_counter() - t
    t = time.perf_counter()
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
          str(_free_port()), str(script), *args[:2], str(work / "dist"), args[3]], log, env)
    dist_s = time.perf_counter() - t
    one = json.loads((work / "one.rank0.json").read_text())
    ranks = [json.loads((work / f"dist.rank{r}.json").read_text()) for r in range(nproc)]
    return {"sizes": sizes, "single": one, "ranks": ranks, "wall_s": {"single": one_s, "torchrun": dist_s}}


def fit_peak(rec: dict[str, Any], methods: list[str]) -> int:
    """The peak resident memory (bytes) over the head and the detector stages of one process."""
    return max(rec["peak_rss"].get(s, 0) for s in ("head", *methods))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.01, help="fraction of ImageNet-1K's counts (default 0.01)")
    ap.add_argument("--width", type=int, default=32, help="token width of the synthetic tagger (default 32)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="detectors (comma-separated; default: "
                    "the classic ones)")
    ap.add_argument("--nproc", type=int, default=2, help="torchrun ranks (default 2)")
    ap.add_argument("--work", help="folder for the cache and logs (default: a new temp folder, removed after)")
    ap.add_argument("--json", help="write the result file here")
    a = ap.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="torchrun-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        r = measure(a.scale, a.width, methods, work, a.nproc)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    procs = {"single": r["single"], **{f"rank{x['rank']}": x for x in r["ranks"]}}
    for name, rec in procs.items():
        if rec["errors"]:
            raise SystemExit(f"{name}: detectors failed: {rec['errors']}")
    same = all(x["auroc"] == r["single"]["auroc"] for x in r["ranks"])
    mib = 2**20
    c = counts(a.scale)
    print(f"scale {a.scale} of ImageNet-1K: {c['train']} train, {c['test']} test, 4 x {c['ood']} OOD; width {a.width}; "
          f"methods {','.join(methods)}; {a.nproc} gloo ranks")
    print(f"{'stage':<16}" + "".join(f"{n:>14}" for n in procs) + "   (peak RSS, MiB)")
    for stage in ("extract", "head", *methods):
        print(f"{stage:<16}" + "".join(f"{rec['peak_rss'].get(stage, 0) / mib:>14.1f}" for rec in procs.values()))
    peaks = {n: fit_peak(rec, methods) for n, rec in procs.items()}
    print(f"{'head+detectors':<16}" + "".join(f"{peaks[n] / mib:>14.1f}" for n in procs))
    for n, rec in procs.items():
        print(f"{n}: training split fields loaded: {rec['loaded_fields'].get('train') or 'labels only'}")
    print(f"AUROC of every row equal on every rank and in one process: {same}")
    ratio = peaks["rank1"] / peaks["single"] if "rank1" in peaks and peaks["single"] else float("nan")
    print(f"head+detectors peak RSS, rank 1 / single process: {ratio:.3f}")
    out = {"benchmark": "torchrun_memory", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
           "scale": a.scale, "width": a.width, "methods": methods, "nproc": a.nproc, "sizes": r["sizes"],
           "platform": platform.platform(), "cpus": os.cpu_count(), "wall_s": r["wall_s"],
           "peak_rss_bytes": {n: rec["peak_rss"] for n, rec in procs.items()},
           "head_detectors_peak_rss_bytes": peaks, "rank1_over_single": ratio, "auroc_equal": same,
           "loaded_fields": {n: rec["loaded_fields"] for n, rec in procs.items()},
           "timings": {n: rec["timings"] for n, rec in procs.items()},
           "note": "peak RSS per stage: VmHWM reset before each stage (file pages of the memory-mapped cache count); "
                   "loaded machine: preliminary"}
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
