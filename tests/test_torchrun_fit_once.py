"""``tagood bench`` on 2 gloo ranks fits the IND head and every detector whose fit runs no collective on rank 0
alone and broadcasts the fitted state (:func:`tagood.detectors.base.fit_once`): rank 1 never loads the training
split's pooled features nor fits the head, holds bit-identical fitted state, and the scores equal a one-process
run's. TagOOD's projector still trains data-parallel on both ranks. Real Fashion-MNIST PNG folders, the real
EfficientNet-Lite0 weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from image_folders import fashion_folder, folder_config

METHODS = ["msp", "energy", "knn[k=5]", "mahalanobis", "cs", "tagood[epochs=1]"]

WORKER = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    from tagood import detectors
    from tagood.bench.config import load_config
    from tagood.bench.runner import run
    from tagood.cache import CacheReader
    from tagood.detectors import head as head_module
    from tagood.runtime import distributed

    config, cache, out, methods = sys.argv[1:5]
    calls, head_fits, fits = [], [], {}
    arrays = CacheReader.arrays
    def counted_arrays(self, names, *a, **k):  # every load of whole fields of a cache entry into memory
        calls.append([self.split, sorted(names)])
        return arrays(self, names, *a, **k)
    CacheReader.arrays = counted_arrays
    fit_linear_head = head_module.fit_linear_head
    def counted_head(*a, **k):
        head_fits.append(len(a[0]))
        return fit_linear_head(*a, **k)
    head_module.fit_linear_head = counted_head
    for spec in methods.split(","):
        cls = detectors.get_class(detectors.parse_name(spec)[0])
        owner = next(c for c in cls.__mro__ if "_fit" in c.__dict__)  # the class whose _fit it runs
        if not getattr(owner._fit, "counted", False):
            def counted_fit(self, train, context, _fit=owner._fit):
                fits[type(self).name] = fits.get(type(self).name, 0) + 1
                return _fit(self, train, context)
            counted_fit.counted = True
            owner._fit = counted_fit
    results, state = run(load_config(config), out_dir=None, cache_root=cache, methods=methods.split(","), progress=False)
    rank = distributed.world().rank
    digests = {}
    for spec, d in state.fitted.items():
        if getattr(d, "fit_collective", False):
            continue
        arr, meta = d._state()
        h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
        for k in sorted(arr):
            h.update(k.encode() + np.ascontiguousarray(arr[k]).tobytes())
        digests[spec] = h.hexdigest()
    np.savez(f"{out}.rank{rank}.npz", **{f"{m}|{s}": v for m, per in state.scores.items() for s, v in per.items()})
    json.dump({"calls": calls, "head_fits": head_fits, "fits": fits, "digests": digests, "errors": state.errors,
               "loaded": getattr(state, "loaded_fields", None), "peak_rss": getattr(state, "peak_rss", None),
               "train_features": state.splits["train"].features.features is not None},
              open(f"{out}.rank{rank}.json", "w"))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(procs: list[subprocess.Popen], timeout: float = 400) -> None:
    deadline = time.time() + timeout
    for p in procs:
        out, _ = p.communicate(timeout=max(1, deadline - time.time()))
        assert p.returncode == 0, out[-3000:]


@pytest.mark.slow  # one process and two ranks of a small bench with TagOOD's projector: about a minute on 2 shared cores
def test_rank1_fits_nothing_it_can_receive(tmp_path, backbone):
    fashion_folder(tmp_path / "train", {"trouser": 1, "bag": 8}, 16, "train")
    fashion_folder(tmp_path / "test", {"trouser": 1, "bag": 8}, 9)
    fashion_folder(tmp_path / "ood", {"sneaker": 7, "shirt": 6}, 7)
    cfg = folder_config(tmp_path / "bench.toml", ["msp"], "wear", name="fitonce", options="shard_size = 4\n")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "TAGOOD_DIST_TIMEOUT": "120",
           "TAGOOD_HOME": str(backbone.onnx_path().parent.parent)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    methods = ",".join(METHODS)

    def launch(out: str, cache: str, rank: int | None = None, port: str = "") -> subprocess.Popen:
        e = env if rank is None else {**env, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                                      "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        return subprocess.Popen([sys.executable, str(script), str(cfg), str(tmp_path / cache), str(tmp_path / out),
                                 methods], env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    port = str(_free_port())
    _wait([launch("one", "c1"), launch("two", "c2", 0, port), launch("two", "c2", 1, port)])
    one, r0, r1 = (json.loads((tmp_path / f).read_text()) for f in ("one.rank0.json", "two.rank0.json", "two.rank1.json"))
    assert not one["errors"] and not r0["errors"] and not r1["errors"]

    # rank 1 never loaded the training split's pooled features (rank 0 and one process did) nor fitted the head
    def train_fields(r: dict) -> set[str]:
        return {f for split, names in r["calls"] if split == "fitonce-train" for f in names}

    assert "features" in train_fields(one) and "features" in train_fields(r0)
    assert "features" not in train_fields(r1) and not r1["train_features"]
    assert {"tokens", "tag_probs", "tag_attention"} <= train_fields(r1)  # what TagOOD's projector trains on, its shard
    assert "features" not in r1["loaded"]["train"] and "features" in r0["loaded"]["train"]
    assert one["head_fits"] == r0["head_fits"] == [32] and r1["head_fits"] == []
    # the classic detectors' fits ran on rank 0 only; TagOOD's projector trained on both ranks (data-parallel)
    assert r1["fits"] == {"tagood": 1}, r1["fits"]
    assert r0["fits"] == one["fits"] == {m: 1 for m in ("msp", "energy", "knn", "mahalanobis", "cs", "tagood")}, r0["fits"]
    # rank 1 holds the fitted state rank 0 fitted, bit for bit, and rank 0's is the one-process fit's
    assert r1["digests"] == r0["digests"] == one["digests"] and len(r0["digests"]) == len(METHODS) - 1
    assert {"extract", "head", *METHODS} <= set(r1["peak_rss"])

    ref, got = np.load(tmp_path / "one.rank0.npz"), np.load(tmp_path / "two.rank0.npz")
    assert sorted(got.files) == sorted(ref.files) and len(ref.files) == 2 * len(METHODS)
    for k in ref.files:
        if k.startswith("tagood"):  # DDP training sums gradients in another order (test_ddp_training_equals_one_process)
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-5, err_msg=k)
        elif k.startswith("knn"):  # a float32 search: numpy's BLAS rounds a 9-row product's last float32 bits
            # differently from an 18-row one's (4.4e-7 relative measured); the fitted bank is equal (digests above)
            np.testing.assert_allclose(got[k], ref[k], rtol=2e-6, atol=0, err_msg=k)
        else:  # the same fitted state (digests above) scoring each rank's rows: equal up to the last bits of BLAS
            # products over 9 rows instead of 18 (Mahalanobis differs in one score by 2.5e-15 relative)
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=0, err_msg=k)


def test_which_detectors_fit_once() -> None:
    """Rank 0 fits and broadcasts what can hand over its state and fits without collectives; TagOOD's projector
    family trains data-parallel and AdaNeg (test-time, not saveable) fit on every rank."""
    from tagood import detectors
    from tagood.detectors.base import fits_once

    for spec in ("msp", "energy", "knn", "mahalanobis", "vim", "cs", "tagscore"):
        assert fits_once(detectors.create(spec)), spec
    for spec in ("tagood", "ce+cs", "adaneg"):
        assert not fits_once(detectors.create(spec)), spec


_PEAK_SCRIPT = """
import numpy as np
from tagood.runtime import memory
memory.reset_peak()
base = memory.peak_rss()
buf = np.ones(200 * 2**20, dtype=np.uint8)
grown = memory.peak_rss() - base
del buf
reset = memory.reset_peak()
after = memory.peak_rss() - base
print(grown, int(reset), after, sorted(memory.rss()))
"""


def test_peak_rss_resets_per_stage() -> None:
    """The per-stage peak (tagood.runtime.memory): a 200 MiB buffer shows in the peak; after it is freed and the mark
    reset, the next stage's peak no longer holds it. In a fresh interpreter: a long-lived process (the test runner)
    may serve the buffer from heap pages already resident, which no peak would show."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True).stdout
    grown, reset, after, fields = out.split(maxsplit=3)
    assert int(grown) >= 190 * 2**20
    assert reset == "1"
    assert int(after) < 100 * 2**20
    assert all(f in fields for f in ("'anon'", "'file'", "'rss'"))
