"""Wall time of ``tagood demo`` (the default: ``scenes``, every method) from a cold start: this checkout vs an
earlier git revision, alternated in one run (issue 13, "demo time").

Each run is a fresh process with an empty ``$TAGOOD_HOME`` and feature cache, so it pays what a first run on a
fresh machine pays: the ONNX export, the extraction and the text-prompt encodings. The baseline is ``--before``
(a git revision, checked out into a temporary worktree and imported through ``PYTHONPATH`` with this
checkout's ``.venv``); ``now`` is this checkout. The two alternate ``--runs`` times. Printed: each run's wall
time and its per-method times over 1 s (``run.log``), whether the two result tables are identical, and last
the ratio of the median wall times ``before / now`` (> 1 = faster now).

    .venv/bin/python benchmarks/demo_time.py --before 692b146 [--runs 2] [--demo-args "--methods odin,tagood"] [--keep DIR]

``--keep DIR`` keeps each run's output folder (results.md, results.json, run.log, ...) as ``DIR/<before|now>-<run>``.
When the tables differ, the methods whose rows differ are listed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def demo(src: Path, work: Path, extra: list[str]) -> tuple[float, dict[str, float], str]:
    """One cold ``tagood demo`` with the package under ``src``: (wall s, per-method s, the results table)."""
    out = work / "run"
    env = dict(os.environ, TAGOOD_HOME=str(work / "home"), TAGOOD_CACHE=str(work / "cache"), PYTHONPATH=str(src))
    cmd = [sys.executable, "-m", "tagood", "demo", "--quiet", "--out", str(out), *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    methods = {m.group(1): float(m.group(2))
               for m in re.finditer(r"tagood\.bench\.runner: (\S+) done in ([0-9.]+)s", (out / "run.log").read_text())}
    table = "\n".join(line for line in (out / "results.md").read_text().splitlines() if line.startswith("| "))
    return wall, methods, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision of the baseline")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--demo-args", default="", help="extra arguments of both demos")
    ap.add_argument("--keep", type=Path, default=None, help="keep each run's output folder under this folder")
    args = ap.parse_args()
    extra = shlex.split(args.demo_args)
    with tempfile.TemporaryDirectory(prefix="tagood-demo-time-") as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), args.before], check=True)
        try:
            walls: dict[str, list[float]] = {"before": [], "now": []}
            tables: dict[str, set[str]] = {"before": set(), "now": set()}
            for r in range(args.runs):
                for name, src in (("before", tree / "src"), ("now", ROOT / "src")):
                    wall, methods, table = demo(src, Path(tmp) / f"{name}-{r}", extra)
                    walls[name].append(wall)
                    tables[name].add(table)
                    if args.keep is not None:
                        shutil.copytree(Path(tmp) / f"{name}-{r}" / "run", args.keep / f"{name}-{r}", dirs_exist_ok=True)
                    slow = ", ".join(f"{k} {v:.1f}" for k, v in methods.items() if v >= 1.0)
                    print(f"{name:6s} run {r + 1}: {wall:.1f} s ({slow})", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    same = len(tables["before"] | tables["now"]) == 1
    print(f"result tables identical across all runs: {same}")
    if not same:
        rows = [set(t.splitlines()) for t in tables["before"] | tables["now"]]
        changed = sorted({r.split("|")[1].strip() for r in set.union(*rows) - set.intersection(*rows)})
        print(f"methods whose rows differ: {', '.join(changed)}")
    print(f"median wall time: before {statistics.median(walls['before']):.1f} s, now {statistics.median(walls['now']):.1f} s")
    print(f"ratio before / now: {statistics.median(walls['before']) / statistics.median(walls['now']):.2f}")


if __name__ == "__main__":
    main()
