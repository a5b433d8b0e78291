"""Benchmark: the whole `tagood bench` pipeline rehearsed at ImageNet-1K counts on the synthetic tagger.

Rehearsal only: the images are :class:`tagood.data.synthetic.SyntheticSource` images and the backbone is the
synthetic RAM-shaped tagger (:mod:`tagood.backbones.synthetic`), so the model and the decoding cost nothing and what
is measured is tagood's own code: extraction into the cache, the IND head, the detectors' fit and scoring (TagOOD's
vocabulary, decomposition and projector training included), at a scale given as a fraction of ImageNet-1K's counts
(1,281,167 training images, 50,000 test images, four OOD sets of 10,000), with 145 tokens and 4,585 tags per image
(RAM's) and a token width given by ``--width`` (stated in the output: the cache holds 145 x width fp16 values and
4,585 float32 tag probabilities per image, so the width decides whether full size fits the disk).

Each stage runs in its own `tagood bench` process on a shared cache, so a stage's peak memory is its own process's:

* the first process extracts every split into an empty cache (every field: FeatureNorm and TagScore, which it runs,
  need all of them between them), fits the IND head (the bench always does) and scores FeatureNorm and TagScore; its
  time is split into one line per split (``extract:<split>``), ``head``, ``featurenorm`` and ``tagscore`` from the
  bench's own timings, all with that process's peak memory;
* one stage per detector (``--methods``): its fit + score time from the bench's timings. A detector that needs fewer
  fields than the first process stored (MSP: ``features``) reads the first process's complete entries, which hold a
  superset of its fields (:func:`tagood.cache.superset_entry`), as a user's run of that detector alone after a fuller
  run would: nothing is extracted again, ``process_extract_s`` is the time to open and check those entries and load
  the fields it needs, and the disk figures stay those of one entry per split (TagOOD: ``epochs`` capped by
  ``--tagood-epochs``, batch 256, so its projector takes at most ``epochs x ceil(N_train / 256)`` steps: a stated
  step cap). Every process fits the IND head again (the bench always does): ``process_wall_s`` includes it.

Per stage it prints wall time, throughput (images / s), the process's peak RSS (``ru_maxrss``) and peak anonymous
RSS (``RssAnon`` sampled every 50 ms: memory-mapped cache pages are file-backed and not counted there), and the
bytes and files on disk (cache + outputs) and the number of cache entries after it. ``--stream-above-gb`` (default 0)
is the bench's ``stream_above_gb``: at 0 the tokens and tag maps are streamed from the cache at every scale, as they
are at full size. With two scales a factor 10 apart it prints, per stage, the ratio cost(N) / cost(N/10) of wall time
and of peak anonymous RSS (linear time = 10, flat memory = 1). The result file (``--json``) holds every figure; the
figures of a loaded machine are preliminary.

Disk: before a scale starts, the script estimates its cache (``cache_bytes_per_image_est`` x images: about 26 KB per
image at width 16, 36 GB at full size, most of it the float32 tag probabilities) and refuses to start when that is
more than 90% of the free space under ``--work`` (a warning above 50%). Each scale's cache is deleted once its stages
are measured (``--keep-cache`` keeps it under ``--work``), so the scales never hold two caches at once; a temporary
``--work`` folder is removed at the end.

    python benchmarks/scale_rehearsal.py --scale 0.001 --scale 0.01 --width 32 [--json out.json]
    python benchmarks/scale_rehearsal.py --scale 0.1 --scale 1 --width 16 --json out.json   # full size: ~36 GB
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tagood.runtime.machine import cpu_model

IMAGENET = {"train": 1_281_167, "test": 50_000, "ood": 10_000}
N_OOD_SETS = 4
TOKENS, TAGS, TOP_K, BLOCKS = 145, 4585, 10, 24
DEFAULT_METHODS = ("msp", "energy", "knn", "mahalanobis", "vim", "tagood")
FIRST_METHODS = ("featurenorm", "tagscore")  # run by the extracting process: between them they need every field
BENCH = [sys.executable, "-m", "tagood", "bench"]


def counts(scale: float) -> dict[str, int]:
    """Image counts at ``scale`` of ImageNet-1K: train, test and each OOD set (at least 2 each)."""
    return {k: max(2, round(v * scale)) for k, v in IMAGENET.items()}


def num_classes(n_train: int, cap: int = 1000) -> int:
    """IND classes: ImageNet's 1,000 when there are at least 20 training images per class, else N_train / 20 (>= 2)."""
    return max(2, min(cap, n_train // 20))


def bytes_per_image(width: int) -> int:
    """Cache bytes per image: fp16 tokens, features and tag maps, float32 tag probabilities and block norms."""
    return TOKENS * width * 2 + width * 2 + TAGS * 4 + TOP_K * TOKENS * 2 + TOP_K * 8 + BLOCKS * 4 + 16


def write_config(path: Path, scale: float, width: int, stream_above_gb: float = 0.0) -> dict[str, int]:
    """A bench config of the synthetic tagger and splits at ``scale``; returns the split sizes."""
    c = counts(scale)
    k = num_classes(c["train"])
    lines = ['name = "scale-rehearsal"', 'methods = ["featurenorm"]', "batch_size = 256", "",
             "[options]", f"stream_above_gb = {stream_above_gb}", "",
             "[backbone]", 'name = "synthetic"', f"tokens = {TOKENS}", f"width = {width}", f"tags = {TAGS}",
             f"top_k_tags = {TOP_K}", f"blocks = {BLOCKS}", ""]
    sizes = {"train": c["train"], "test": c["test"]}
    for part in ("train", "test"):
        lines += [f"[{part}]", 'type = "synthetic"', f'part = "{part}"', f"images = {c[part]}", f"num_classes = {k}", ""]
    for s in range(N_OOD_SETS):
        lines += [f"[ood.ood{s}]", 'type = "synthetic"', 'part = "ood"', f"images = {c['ood']}", f"num_classes = {k}",
                  f"ood_set = {s}", ""]
        sizes[f"ood{s}"] = c["ood"]
    path.write_text("\n".join(lines))
    return sizes


def disk_usage(*roots: Path) -> tuple[int, int]:
    """(bytes, files) under ``roots``."""
    nbytes = nfiles = 0
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                try:
                    nbytes += os.lstat(os.path.join(dirpath, f)).st_size
                    nfiles += 1
                except OSError:
                    pass
    return nbytes, nfiles


def _anon_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_bench(config: Path, methods: str, out: Path, cache: Path, log: Path) -> dict[str, Any]:
    """Run one `tagood bench` process; returns its wall time, peak RSS, peak anonymous RSS and the bench's timings."""
    cmd = [*BENCH, str(config), "--methods", methods, "--out", str(out), "--cache", str(cache), "--quiet"]
    t0 = time.perf_counter()
    with open(log, "ab") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _anon_kb(proc.pid))
                done.wait(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        th.join()
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"`{' '.join(cmd)}` failed (exit {rc}); the end of {log}:\n{tail}")
    meta = json.loads((out / "results.json").read_text())["meta"]
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "peak_anon_mb": peak[0] / 1024,
            "timings": meta["timings"], "peak_rss_stage_mb": meta.get("peak_rss_mb", {}),
            "storage_read_stage_mb": meta.get("storage_read_mb", {}), "command": " ".join(cmd)}


def _spec(method: str, tagood_epochs: int) -> str:
    """The method spec a stage runs (TagOOD with its step cap)."""
    return f"tagood[epochs={tagood_epochs},batch_size=256]" if method == "tagood" else method


def _note(method: str, tagood_epochs: int, n_train: int) -> str:
    note = "fit + score"
    if method == "tagood":
        steps = tagood_epochs * math.ceil(n_train / 256)
        note += f"; vocabulary, decomposition, projector ({tagood_epochs} epoch(s), at most {steps} steps)"
    return note


def rehearse(scale: float, width: int, methods: list[str], work: Path, tagood_epochs: int,
             stream_above_gb: float = 0.0, keep_cache: bool = False, one_process: bool = False) -> dict[str, Any]:
    """Every stage at one scale; returns the scale's record (stages in order). The scale's cache and outputs are
    deleted at the end unless ``keep_cache``. With ``one_process`` every stage runs in one `tagood bench` process
    (the IND head is fitted once) and each stage's peak RSS is the bench's own per-stage figure."""
    work.mkdir(parents=True, exist_ok=True)
    cfg, cache, log = work / "bench.toml", work / "cache", work / "bench.log"
    sizes = write_config(cfg, scale, width, stream_above_gb)
    n_all = sum(sizes.values())
    n_eval = n_all - sizes["train"]
    need = n_all * bytes_per_image(width)
    free = shutil.disk_usage(work).free
    if need > 0.9 * free:
        raise SystemExit(f"scale {scale} at width {width} needs about {need / 2**30:.1f} GiB of cache, "
                         f"{free / 2**30:.1f} GiB are free under {work}: lower --width or choose another --work")
    if need > 0.5 * free:
        print(f"warning: scale {scale} at width {width} needs about {need / 2**30:.1f} GiB of cache, more than half of "
              f"the {free / 2**30:.1f} GiB free under {work}", file=sys.stderr, flush=True)
    stages: list[dict[str, Any]] = []

    def add(name: str, wall: float, items: int, proc: dict[str, Any], note: str = "", bench_stage: str = "") -> None:
        # bench_stage: the bench's own name of the stage (extract, head, a method spec), for its storage reads
        nbytes, nfiles = disk_usage(cache, work / "out")
        entries = sum(1 for d in cache.iterdir() if (d / "manifest.json").is_file()) if cache.is_dir() else 0
        extract_s = sum(float(v) for k, v in proc["timings"].items() if k.startswith("extract_"))
        stages.append({"stage": name, "wall_s": round(wall, 3), "items": items,
                       "throughput_per_s": round(items / wall, 1) if wall > 0 else None,
                       "peak_rss_mb": round(proc["peak_rss_mb"], 1),
                       "peak_anon_mb": None if proc["peak_anon_mb"] is None else round(proc["peak_anon_mb"], 1),
                       "storage_read_mb": proc.get("storage_read_stage_mb", {}).get(bench_stage),
                       "disk_bytes": nbytes, "disk_files": nfiles, "cache_entries": entries,
                       "process_wall_s": round(proc["wall_s"], 3),
                       "process_extract_s": round(extract_s, 3),
                       "note": note})

    processes: list[dict[str, Any]] = []
    if one_process:
        specs = [*FIRST_METHODS, *(_spec(m, tagood_epochs) for m in methods)]
        res = run_bench(cfg, ",".join(specs), work / "out" / "all", cache, log)
        processes.append({"methods": specs, **res})
        tm, peaks = res["timings"], res.get("peak_rss_stage_mb", {})

        def stage_proc(stage: str) -> dict[str, Any]:
            # the stage's own peak (the bench resets the kernel's high-water mark before each stage); the
            # anonymous peak is the whole process's and is not split by stage
            return {**res, "peak_rss_mb": float(peaks.get(stage, res["peak_rss_mb"])), "peak_anon_mb": None}

        for split, n in sizes.items():
            add(f"extract:{split}", float(tm.get(f"extract_{split}_s", 0.0)), n, stage_proc("extract"),
                "images extracted into the cache (peak RSS and storage reads: all splits' extraction)", "extract")
        add("head", float(tm.get("fit_head_s", 0.0)), sizes["train"], stage_proc("head"),
            "IND linear head fitted on the train features", "head")
        for m, spec in zip([*FIRST_METHODS, *methods], specs, strict=True):
            wall = float(tm.get(f"{spec}_fit_s", 0.0)) + float(tm.get(f"{spec}_score_s", 0.0))
            add(m, wall, n_all, stage_proc(spec), _note(m, tagood_epochs, sizes["train"]), spec)
    else:
        first = run_bench(cfg, ",".join(FIRST_METHODS), work / "out" / "extract", cache, log)
        processes.append({"methods": list(FIRST_METHODS), **first})
        tm = first["timings"]
        for split, n in sizes.items():
            add(f"extract:{split}", float(tm.get(f"extract_{split}_s", 0.0)), n, first, "images extracted into the cache",
                "extract")
        add("head", float(tm.get("fit_head_s", 0.0)), sizes["train"], first, "IND linear head fitted on the train features",
            "head")
        for m in FIRST_METHODS:
            add(m, float(tm.get(f"{m}_fit_s", 0.0)) + float(tm.get(f"{m}_score_s", 0.0)), n_all, first, "fit + score", m)
        for m in methods:
            spec = _spec(m, tagood_epochs)
            res = run_bench(cfg, spec, work / "out" / m, cache, log)
            processes.append({"methods": [spec], **res})
            t = res["timings"]
            wall = float(t.get(f"{spec}_fit_s", 0.0)) + float(t.get(f"{spec}_score_s", 0.0))
            add(m, wall, n_all, res, _note(m, tagood_epochs, sizes["train"]), spec)
    if not keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(work / "out", ignore_errors=True)
    return {"scale": scale, "sizes": sizes, "classes": num_classes(sizes["train"]), "cache_bytes_per_image_est":
            bytes_per_image(width), "n_eval": n_eval, "stages": stages, "processes": processes,
            **({"one_process": True} if one_process else {})}


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage, cost at each scale over cost at the scale 10x smaller (when both were run)."""
    out = []
    by_scale = {r["scale"]: {s["stage"]: s for s in r["stages"]} for r in runs}
    for big in sorted(by_scale):
        small = next((s for s in by_scale if math.isclose(s * 10, big, rel_tol=1e-9)), None)
        if small is None:
            continue
        for name, b in by_scale[big].items():
            a = by_scale[small].get(name)
            if a is None:
                continue
            out.append({"stage": name, "scale": big, "vs_scale": small,
                        "time_ratio": round(b["wall_s"] / a["wall_s"], 2) if a["wall_s"] > 0 else None,
                        "rss_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 2) if a["peak_rss_mb"] > 0 else None,
                        "anon_rss_ratio": (round(b["peak_anon_mb"] / a["peak_anon_mb"], 2)
                                           if a["peak_anon_mb"] and b["peak_anon_mb"] else None),
                        "disk_ratio": round(b["disk_bytes"] / a["disk_bytes"], 2) if a["disk_bytes"] > 0 else None})
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, action="append", help="fraction of ImageNet-1K's counts (0.001, 0.01, "
                    "0.1, 1); repeat to run several (default 0.001)")
    ap.add_argument("--width", type=int, default=32, help="token width of the synthetic tagger (default 32)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="detectors, one stage each (comma-separated)")
    ap.add_argument("--tagood-epochs", type=int, default=1, help="TagOOD projector epochs (the step cap; default 1)")
    ap.add_argument("--stream-above-gb", type=float, default=0.0, help="the bench's stream_above_gb (default 0: "
                    "tokens and tag maps always streamed from the cache, as they are at full size)")
    ap.add_argument("--work", help="folder for the caches and outputs (default: a new temp folder, removed after; "
                    "see --keep-cache)")
    ap.add_argument("--keep-cache", action="store_true", help="keep each scale's cache and outputs under --work "
                    "(default: deleted once the scale is measured; at full size the cache is tens of GB)")
    ap.add_argument("--one-process", action="store_true", help="every stage in one `tagood bench` process (the IND "
                    "head fitted once; each stage's peak RSS from the bench's per-stage figure) instead of one "
                    "process per detector")
    ap.add_argument("--quiet-machine", action="store_true", help="state that nothing else ran on the machine: the "
                    "result file is then not marked preliminary")
    ap.add_argument("--json", help="write the result file here")
    a = ap.parse_args(argv)
    scales = sorted(set(a.scale or [0.001]))
    if any(s <= 0 for s in scales) or a.width < 1:
        ap.error("--scale must be > 0 and --width >= 1")
    methods = [m for m in a.methods.split(",") if m]
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="scale-rehearsal-"))
    try:
        runs = []
        for s in scales:
            print(f"scale {s:g}: {counts(s)} images (train, test, each of {N_OOD_SETS} OOD sets), "
                  f"{TOKENS} tokens x width {a.width}, {TAGS} tags", flush=True)
            runs.append(rehearse(s, a.width, methods, work / f"scale-{s:g}", a.tagood_epochs, a.stream_above_gb,
                                 a.keep_cache, a.one_process))
            print(f"{'stage':<16}{'wall s':>10}{'items/s':>12}{'peak RSS MB':>13}{'anon MB':>10}{'read MB':>10}"
                  f"{'disk MB':>10}{'files':>8}{'process extract s':>19}")
            for st in runs[-1]["stages"]:
                print(f"{st['stage']:<16}{st['wall_s']:>10.2f}{st['throughput_per_s'] or 0:>12.0f}{st['peak_rss_mb']:>13.0f}"
                      f"{st['peak_anon_mb'] or 0:>10.0f}{st['storage_read_mb'] or 0:>10.0f}"
                      f"{st['disk_bytes'] / 2**20:>10.1f}{st['disk_files']:>8}"
                      f"{st['process_extract_s']:>19.2f}", flush=True)
        rs = ratios(runs)
        if rs:
            print("cost(N) / cost(N/10): time (linear = 10), peak RSS and peak anonymous RSS (flat = 1), disk")
            for r in rs:
                print(f"{r['stage']:<16} scale {r['scale']:g}: time {r['time_ratio']}, peak RSS {r['rss_ratio']}, "
                      f"anonymous {r['anon_rss_ratio']}, disk {r['disk_ratio']}")
        result = {"benchmark": "scale_rehearsal", "preliminary": not a.quiet_machine,
                  "note": "synthetic tagger and images (rehearsal); " + (
                      "nothing else ran on the machine" if a.quiet_machine else
                      "figures from a shared, loaded machine"), "one_process": a.one_process,
                  "width": a.width, "tokens": TOKENS, "tags": TAGS, "top_k_tags": TOP_K, "imagenet_counts": IMAGENET,
                  "ood_sets": N_OOD_SETS, "methods": methods, "tagood_epochs": a.tagood_epochs,
                  "stream_above_gb": a.stream_above_gb,
                  "command": " ".join(["python", "benchmarks/scale_rehearsal.py", *(argv if argv is not None else sys.argv[1:])]),
                  "machine": {"platform": platform.platform(), "processor": cpu_model(), "cpus": os.cpu_count(),
                              "python": platform.python_version()},
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": runs, "ratios": rs}
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
            print(f"wrote {a.json}")
        return result
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
