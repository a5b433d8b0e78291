"""Slowdown of the quick demo's ``ce+cs`` training beside other CPU-bound processes (issue 13, thread discipline).

Runs ``tagood demo --quick --methods ce+cs`` (warm feature cache: a first, untimed run fills it) once alone and
then beside ``--competitors`` processes that each run a ``--competitor-threads``-thread numpy matrix-product
loop, and prints the ratio of the two ``ce+cs`` training times (``meta.timings["ce+cs_fit_s"]`` of
results.json) last. On a machine of C cores with k competitors of t threads, a fair share of the cores makes
the run ``(t*k + C) / C`` times slower when the demo uses all C cores alone (2 cores, 2 competitors of 2
threads: 3x).

    TAGOOD_HOME=/tmp/th .venv/bin/python benchmarks/contention.py [--competitors 2] [--env OMP_WAIT_POLICY=ACTIVE]

``--env K=V`` is passed to the demo's process (e.g. ``TAGOOD_THREADS=1``) to compare thread settings; the
machine's load average before each run is printed beside it, since other work on the machine skews both
figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPETITOR = """
import os, numpy as np
a = np.random.default_rng(0).standard_normal((700, 700))
while True:
    a = a @ a
    a /= np.abs(a).max()
"""


def run_demo(env: dict[str, str], out: Path) -> dict[str, float]:
    """One ``tagood demo --quick --methods ce+cs`` in a subprocess; its timings plus the wall time."""
    cmd = [sys.executable, "-m", "tagood", "demo", "--quick", "--methods", "ce+cs", "--out", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"tagood demo failed ({r.returncode}):\n{r.stderr[-3000:]}")
    timings = json.loads((out / "results.json").read_text())["meta"]["timings"]
    return {"fit_s": float(timings["ce+cs_fit_s"]), "total_s": float(timings["total_s"]), "wall_s": wall}


def start_competitors(k: int, threads: int) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env) for _ in range(k)]
    time.sleep(2.0)  # let them reach their loops
    return procs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--competitors", type=int, default=2)
    p.add_argument("--competitor-threads", type=int, default=2)
    p.add_argument("--env", action="append", default=[], help="K=V for the demo's process (repeatable)")
    p.add_argument("--skip-warm", action="store_true", help="the feature cache is already warm")
    a = p.parse_args()
    env = dict(os.environ)
    for kv in a.env:
        k, _, v = kv.partition("=")
        env[k] = v
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="tagood-contention-") as tmp:
        out = Path(tmp)
        if not a.skip_warm:
            run_demo(env, out / "warm")
        load0 = os.getloadavg()[0]
        alone = run_demo(env, out / "alone")
        procs = start_competitors(a.competitors, a.competitor_threads)
        try:
            load1 = os.getloadavg()[0]
            busy = run_demo(env, out / "busy")
        finally:
            for pr in procs:
                pr.kill()
                pr.wait()
    fair = (a.competitors * a.competitor_threads + cores) / cores
    print(f"settings: {' '.join(a.env) or '(defaults)'}; {cores} cores; {a.competitors} competitors x "
          f"{a.competitor_threads} threads (fair share: {fair:.1f}x)")
    print(f"alone: ce+cs fit {alone['fit_s']:.1f} s, demo total {alone['total_s']:.1f} s (load avg before {load0:.2f})")
    print(f"busy:  ce+cs fit {busy['fit_s']:.1f} s, demo total {busy['total_s']:.1f} s (load avg 2 s in {load1:.2f})")
    print(f"demo total slowdown: {busy['total_s'] / alone['total_s']:.2f}x")
    print(f"ce+cs training slowdown beside {a.competitors} competitors: {busy['fit_s'] / alone['fit_s']:.2f}x")


if __name__ == "__main__":
    main()
