"""torchrun worlds on the CPU (gloo, 2 processes): extraction into one cache entry gives the same bytes as one
process, a rank killed mid-extraction resumes its part, scoring split across ranks equals single-process
scoring, and ``torchrun -m tagood extract`` works end to end. Real images (Fashion-MNIST PNG files), the real
EfficientNet-Lite0 weights."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from image_folders import fashion_folder, folder_config
from tagood import data
from tagood.cache import Manifest
from tagood.extract import extract_split
from tagood.runtime.distributed import split_range, world

SHARD = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = fashion_folder(tmp_path_factory.mktemp("imgs"), {"coat": 4, "shoe": 7}, 9)
    (root / "shoe" / "004.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # a failure inside rank 1's part
    return root


WORKER = textwrap.dedent("""
    import os, signal, sys, json
    import numpy as np
    from tagood import data, detectors
    from tagood.runtime import distributed
    from tagood.backbones.efficientnet import EfficientNetLite0
    from tagood.extract import extract_split
    images, cache, onnx_dir, out = sys.argv[1:5]
    kill_at = int(os.environ.get("KILL_AT", "-1"))
    bb = EfficientNetLite0(cache_dir=onnx_dir, num_threads=1)
    src = data.FolderSource(images)
    load, decoded = src.load, []
    os.environ["TAGOOD_DECODE"] = "threads"  # decode in the rank's own process, where counted() records and kills
    def counted(i):
        if i == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a rank dies mid-extraction
        decoded.append(i)
        return load(i)
    src.load = counted
    r = extract_split(src, bb, cache, split="s", batch_size=2, shard_size=SHARD, fields=["logits", "features"],
                      progress=False, workers=1)
    w = distributed.world()
    fs = r.to_featureset(["logits", "features"])
    det = detectors.create("energy").fit(fs)
    scores = distributed.score(det, fs)
    json.dump({"decoded": decoded, "complete": r.complete}, open(f"{out}.rank{w.rank}.json", "w"))
    if w.is_main:
        np.save(f"{out}.scores.npy", scores)
""".replace("SHARD", str(SHARD)))


def _launch(tmp: Path, images: Path, cache: Path, onnx_dir: Path, out: str, n: int = 2,
            kill_at: dict[int, int] | None = None) -> list[subprocess.Popen]:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in range(n):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "RANK": str(rank), "WORLD_SIZE": str(n),
               "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "TAGOOD_DIST_TIMEOUT": "120", "KILL_AT": str((kill_at or {}).get(rank, -1)),
               # what tagood.runtime.threads sets on a busy machine; it made the exit abort below (test_leaving_...) frequent
               "OMP_WAIT_POLICY": "PASSIVE"}
        procs.append(subprocess.Popen([sys.executable, str(script), str(images), str(cache), str(onnx_dir), out], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    deadline = time.time() + timeout
    for p in procs:
        out, _ = p.communicate(timeout=max(1, deadline - time.time()))
        assert p.returncode == 0, out[-3000:]


def _entry(cache: Path) -> Path:
    (d,) = [p for p in cache.iterdir() if p.is_dir()]
    return d


def _assert_same_entry(a: Path, b: Path) -> None:
    """Same entry name, same shard and sidecar bytes, same manifest apart from timings."""
    assert a.name == b.name
    files = sorted(p.name for p in a.glob("shard-*"))
    assert files == sorted(p.name for p in b.glob("shard-*")) and files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    ma, mb = (json.loads((x / "manifest.json").read_text()) for x in (a, b))
    for m in (ma, mb):
        for k in ("meta", "checksum"):
            m.pop(k)
    assert ma == mb
    assert not (b / "parts").exists()


@pytest.fixture(scope="module")
def single(tmp_path_factory, images, backbone):
    """The one-process reference: its cache entry and its energy scores."""
    from tagood import detectors

    cache = tmp_path_factory.mktemp("single")
    r = extract_split(data.FolderSource(images), backbone, cache, split="s", batch_size=2, shard_size=SHARD,
                      fields=["logits", "features"], progress=False, workers=1)
    fs = r.to_featureset(["logits", "features"])
    return _entry(cache), detectors.create("energy").fit(fs).score(fs), r


def test_two_ranks_give_the_same_entry_and_scores(tmp_path, images, backbone, single):
    ref_dir, ref_scores, ref = single
    cache = tmp_path / "cache"
    _wait(_launch(tmp_path, images, cache, backbone.onnx_path().parent, str(tmp_path / "o")))
    _assert_same_entry(ref_dir, _entry(cache))
    np.testing.assert_array_equal(np.load(tmp_path / "o.scores.npy"), ref_scores)  # split across ranks, gathered in order
    ranks = [json.loads((tmp_path / f"o.rank{r}.json").read_text()) for r in (0, 1)]
    d0, d1 = (set(r["decoded"]) for r in ranks)
    assert not d0 & d1 and d0 | d1 == set(range(18))  # disjoint parts covering the source
    assert all(r["complete"] for r in ranks) and [f["index"] for f in ref.failed] == [13]


def test_killed_rank_resumes_its_part(tmp_path, images, backbone, single):
    ref_dir, ref_scores, _ = single
    cache = tmp_path / "cache"
    lo, hi = split_range(18, 2, 1, align=SHARD)  # rank 1's part: [8, 18)
    assert (lo, hi) == (8, 18)
    # rank 1 dies reading sample 16: by then its shard [8, 12) is committed (the write of a batch is waited for
    # before the batch after next is decoded); [12, 16) may or may not have been
    procs = _launch(tmp_path, images, cache, backbone.onnx_path().parent, str(tmp_path / "o"), kill_at={1: 16})
    procs[1].communicate(timeout=240)
    assert procs[1].returncode == -signal.SIGKILL
    procs[0].kill()  # what torchrun does to the other ranks when one dies
    procs[0].communicate()
    (part,) = list((_entry(cache) / "parts").glob("part-0000000008-*"))
    committed = [(s.start, s.stop) for s in Manifest.load(part / "manifest.json").shards]  # + its commit log
    assert committed in ([(8, 12)], [(8, 12), (12, 16)])  # what was committed survived the kill
    m = _entry(cache) / "manifest.json"
    assert not m.exists() or not json.loads(m.read_text())["complete"]

    _wait(_launch(tmp_path, images, cache, backbone.onnx_path().parent, str(tmp_path / "o")))
    again = json.loads((tmp_path / "o.rank1.json").read_text())
    assert set(again["decoded"]) == set(range(committed[-1][1], 18))  # only what the kill lost
    _assert_same_entry(ref_dir, _entry(cache))
    np.testing.assert_array_equal(np.load(tmp_path / "o.scores.npy"), ref_scores)


def test_torchrun_cli_extract(tmp_path, images, backbone, single):
    """``torchrun --nproc-per-node 2 -m tagood extract ...`` (torch.distributed.run) writes the same entry."""
    ref_dir = single[0]
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
           "TAGOOD_HOME": str(backbone.onnx_path().parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "tagood", "--threads", "1", "extract", str(images), "--split", "s", "--cache", str(cache),
           "--fields", "logits,features", "--batch-size", "2", "--commit-every", str(SHARD), "-q"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    d = _entry(cache)
    ref = json.loads((ref_dir / "manifest.json").read_text())
    got = json.loads((d / "manifest.json").read_text())
    assert got["complete"] and got["meta"]["world_size"] == 2
    assert [(s["start"], s["stop"], s["count"], s["sha256"]) for s in got["shards"]] == \
           [(s["start"], s["stop"], s["count"], s["sha256"]) for s in ref["shards"]]


LEAVE_WORKER = textwrap.dedent("""
    import json, os, sys
    import numpy as np, torch
    from tagood.runtime import distributed
    threads = lambda: len(os.listdir("/proc/self/task"))
    before = threads()
    distributed.init()
    gathered = distributed.all_gather(np.arange(3) * distributed.world().rank)
    during = threads()
    distributed._leave()  # what atexit runs
    json.dump({"before": before, "during": during, "after": threads(), "initialised": torch.distributed.is_initialized(),
               "gathered": [g.tolist() for g in gathered]}, open(sys.argv[1] + f".{os.environ['RANK']}.json", "w"))
""")


def test_leaving_the_group_joins_gloos_threads(tmp_path):
    """Gloo's worker threads release finished collectives' tensors themselves, taking the GIL; one doing so after
    the interpreter began finalising aborted a rank after all its work ("terminate called without an active
    exception", exit -6; seen in CI). The atexit handler must free the groups, which joins those threads, while
    the interpreter is whole: after it, the rank has no more threads than before it joined."""
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_WORKER)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "o")],
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
                                   "RANK": str(k), "WORLD_SIZE": "2", "LOCAL_RANK": str(k), "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port, "TAGOOD_DIST_TIMEOUT": "60"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
    _wait(procs, timeout=120)
    for k in (0, 1):
        r = json.loads((tmp_path / f"o.{k}.json").read_text())
        assert r["gathered"] == [[0, 0, 0], [0, 1, 2]]
        assert r["during"] > r["before"]  # gloo's threads ran
        assert r["after"] <= r["before"] and not r["initialised"], r  # ... and were joined; the group is gone


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5000), parts=st.integers(1, 17), align=st.integers(1, 300))
def test_split_range_partitions(n: int, parts: int, align: int) -> None:
    ranges = [split_range(n, parts, r, align) for r in range(parts)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    for (a, b), (c, _) in zip(ranges[:-1], ranges[1:], strict=True):
        assert b == c and a <= b
    for a, b in ranges:
        assert a % align == 0 and (b % align == 0 or b == n)
    sizes = [-(-(b - a) // align) for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_single_process_world_by_default(monkeypatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    w = world()
    assert (w.rank, w.size, w.distributed, w.is_main) == (0, 1, False, True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="torchrun"):
        world()


TRAIN_WORKER = textwrap.dedent("""
    import sys
    import numpy as np, torch
    from tagood.runtime import distributed
    from tagood.cache import CacheReader
    from tagood.detectors.tagood.train import PRESETS, train_projector
    entry, out = sys.argv[1:3]
    r = CacheReader(entry)
    ts, y = r.tokens("tokens"), r.labels
    cfg = PRESETS["small"].with_(dim=32, mlp=64, dropout=0.0, epochs=3, batch_size=6)
    model, centres, hist = train_projector(ts, y, int(y.max()) + 1, 49, cfg, progress=False)
    w = distributed.world()
    # the attention key bias has a zero gradient in exact arithmetic (it adds the same q.b to every key's logit),
    # so Adam turns its rounding noise into lr-sized steps that differ between any two summation orders: left out
    params = torch.cat([(p.detach()[torch.arange(len(p)) // 32 != 1] if n.endswith("in_proj_bias") else p.detach()).flatten()
                        for n, p in model.named_parameters()]).numpy()
    np.savez(f"{out}.rank{w.rank}.npz", centres=centres.numpy(), params=params, loss=[h["loss"] for h in hist],
             acc=[h["train_acc"] for h in hist])
""")


def test_ddp_training_equals_one_process(tmp_path, images, backbone):
    """Two ranks (DDP, all-reduced EMA class sums and counts) train the same projector and centres as one process
    on the same global batches (batch 6 over 17 real token sets: the last batch splits 3 + 2)."""
    from tagood.cache import CacheReader

    r = extract_split(data.FolderSource(images), backbone, tmp_path / "c", split="t", fields=["tokens"], progress=False)
    script = tmp_path / "train.py"
    script.write_text(TRAIN_WORKER)
    base = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        base.pop(k, None)
    one = subprocess.run([sys.executable, str(script), str(r.dir), str(tmp_path / "one")], env=base, capture_output=True,
                         text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(r.dir), str(tmp_path / "two")],
                              env={**base, "RANK": str(k), "WORLD_SIZE": "2", "LOCAL_RANK": str(k), "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for k in (0, 1)]
    _wait(procs)
    ref, r0, r1 = (np.load(tmp_path / f) for f in ("one.rank0.npz", "two.rank0.npz", "two.rank1.npz"))
    np.testing.assert_array_equal(r0["centres"], r1["centres"])  # every rank holds the same centres
    np.testing.assert_array_equal(r0["params"], r1["params"])
    np.testing.assert_allclose(r0["centres"], ref["centres"], atol=2e-5)
    np.testing.assert_allclose(r0["params"], ref["params"], atol=2e-5)
    np.testing.assert_allclose(r0["loss"], ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(r0["acc"], ref["acc"])
    assert len(CacheReader(r.dir)) == 17


BENCH_METHODS = "msp,knn[k=5],cs"


@pytest.fixture(scope="module")
def bench_config(tmp_path_factory) -> Path:
    """A small benchmark of real Fashion-MNIST PNG folders (2 IND classes, a flat folder of 2 OOD classes)."""
    tmp = tmp_path_factory.mktemp("bench")
    fashion_folder(tmp / "train", {"trouser": 1, "bag": 8}, 16, "train")
    fashion_folder(tmp / "test", {"trouser": 1, "bag": 8}, 9)
    fashion_folder(tmp / "ood", {"sneaker": 7, "shirt": 6}, 7)
    return folder_config(tmp / "bench.toml", ["msp"], "wear", name="torchrun", options="shard_size = 4\n")


def _bench_cmd(cfg: Path, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "tagood", "--threads", "1", "bench", str(cfg), "--out", str(out), "--cache", str(cache),
            "--methods", BENCH_METHODS, "-q"]


def test_bench_on_two_ranks_scores_like_one_process(tmp_path, bench_config, backbone):
    """``tagood bench`` on 2 gloo ranks (each launched as torchrun launches it: RANK / WORLD_SIZE / LOCAL_RANK /
    MASTER_*; each rank given its own --out so a write by rank 1 would show): rank 0's run folder holds the same
    scores and results.json numbers as a one-process run, and rank 1 writes nothing there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "TAGOOD_DIST_TIMEOUT": "120",
           "TAGOOD_HOME": str(backbone.onnx_path().parent.parent)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    one = subprocess.Popen(_bench_cmd(bench_config, tmp_path / "one", tmp_path / "c1"), env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    port = str(_free_port())
    procs = [subprocess.Popen(_bench_cmd(bench_config, tmp_path / f"rank{k}", tmp_path / "c2"),
                              env={**env, "RANK": str(k), "WORLD_SIZE": "2", "LOCAL_RANK": str(k), "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k in (0, 1)]
    _wait([one, *procs])
    from tagood.bench.scores import load_scores

    assert not (tmp_path / "rank1").exists()  # rank 1 computed, rank 0 wrote
    ref, got = (tmp_path / "one"), (tmp_path / "rank0")
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert {"results.json", "scores.npz", "run.log", "results.html"} <= {p.name for p in got.iterdir()}
    assert not list(got.glob(".*"))  # no temp files left
    s_ref, ids_ref = load_scores(ref)
    s_got, ids_got = load_scores(got)
    assert set(s_got) == set(s_ref) == set(BENCH_METHODS.split(","))
    assert {k: list(v) for k, v in ids_got.items()} == {k: list(v) for k, v in ids_ref.items()}
    for m in s_ref:
        for split in ("test", "wear"):
            assert len(s_got[m][split]) == {"test": 18, "wear": 14}[split]
            np.testing.assert_allclose(s_got[m][split], s_ref[m][split], rtol=1e-6, atol=1e-9, err_msg=f"{m}/{split}")
    r_ref, r_got = (json.loads((d / "results.json").read_text()) for d in (ref, got))
    assert r_got["id_accuracy"] == r_ref["id_accuracy"] and not r_got["meta"]["errors"]
    rows = {(x["method"], x["ood"]): x for x in r_ref["rows"]}
    assert {(x["method"], x["ood"]) for x in r_got["rows"]} == set(rows)
    for x in r_got["rows"]:
        for k in ("auroc", "fpr95", "fpr95_ood_pos", "aupr_in", "aupr_out"):
            assert x[k] == pytest.approx(rows[(x["method"], x["ood"])][k], abs=1e-9), (x["method"], k)
    # the extraction ran as two parts into one cache entry per split
    manifests = [json.loads(m.read_text()) for m in (tmp_path / "c2").glob("*/manifest.json")]
    assert len(manifests) == 3 and all(m["complete"] and m["meta"]["world_size"] == 2 for m in manifests)


@pytest.mark.slow  # four CLI launches (fit and score, 1 process and 2 ranks): about a minute on 2 shared cores
def test_fit_and_score_on_two_ranks_like_one_process(tmp_path, bench_config, backbone):
    """``tagood fit`` / ``tagood score`` on 2 gloo ranks: the same threshold and the same per-image scores as one
    process; only rank 0 writes the detector directory and the CSV (each rank is given its own --out)."""
    import csv

    root = bench_config.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "TAGOOD_DIST_TIMEOUT": "120",
           "TAGOOD_HOME": str(backbone.onnx_path().parent.parent)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    tagood = [sys.executable, "-m", "tagood", "--threads", "1"]

    def both(args: Callable[[str], list[str]], cache: str) -> None:
        port = str(_free_port())
        one = subprocess.Popen([*tagood, *args("one"), "--cache", str(tmp_path / "c1"), "-q"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ranks = [subprocess.Popen([*tagood, *args(f"rank{k}"), "--cache", str(tmp_path / cache), "-q"],
                                  env={**env, "RANK": str(k), "WORLD_SIZE": "2", "LOCAL_RANK": str(k),
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
        _wait([one, *ranks])

    both(lambda who: ["fit", str(root / "train"), "--out", str(tmp_path / f"det-{who}"), "--method", "cs"], "c2")
    assert not (tmp_path / "det-rank1").exists()
    m1, m2 = (json.loads((tmp_path / f"det-{w}" / "tagood.json").read_text()) for w in ("one", "rank0"))
    assert m2["threshold"] == pytest.approx(m1["threshold"], rel=1e-9) and m2["n_heldout"] == m1["n_heldout"]
    both(lambda who: ["score", str(tmp_path / ("det-one" if who == "one" else "det-rank0")), str(root / "test"),
                      str(root / "ood"), "--out", str(tmp_path / f"s-{who}.csv")], "c3")
    assert not (tmp_path / "s-rank1.csv").exists()
    r1, r2 = (list(csv.DictReader((tmp_path / f"s-{w}.csv").open())) for w in ("one", "rank0"))
    assert [r["path"] for r in r2] == [r["path"] for r in r1] and len(r1) == 32
    np.testing.assert_allclose([float(r["score"]) for r in r2], [float(r["score"]) for r in r1], rtol=1e-6, atol=1e-9)
    assert [r["is_ood"] for r in r2] == [r["is_ood"] for r in r1]
