"""A lead for issue 13's contention target: one projector training step (the demo's ``small`` preset: width 128,
depth 2, 8 heads, batch 64 of 49 tokens x 1280 with ~40% kept) three ways, alone and beside ``--competitors``
CPU-bound 2-thread numpy processes:

* ``intra-op``: one step on the whole batch with torch's 2 intra-op threads (what ``train_projector`` does);
* ``one-thread``: the same with 1 thread;
* ``two-halves``: two single-thread workers, each the forward and backward of one half of the batch
  (``torch.autograd.grad``), their gradients summed in a fixed order, then one optimizer step: no barrier per
  operator between the two cores. What ``train_projector`` does on the CPU since this measurement
  (:class:`tagood.detectors.tagood.train.CpuParts`); kept here as the bare step, without the data path.

Each in a fresh process (``OMP_WAIT_POLICY=PASSIVE`` beside the competitors, as ``tagood.runtime.threads`` sets it on a busy
machine), ``--steps`` timed steps after 3 warm-up steps. Printed: ms per step of each way, alone and busy, and last the
ratio ``intra-op busy / two-halves busy`` (> 1: the halves hold up better beside other work).

    .venv/bin/python benchmarks/projector_data_parallel.py [--steps 40] [--competitors 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

STEP = r"""
import sys, time, torch, numpy as np
from concurrent.futures import ThreadPoolExecutor
from torch.nn import functional as F
from tagood.detectors.tagood.projector import Projector
mode, steps = sys.argv[1], int(sys.argv[2])
B, L, D = 64, 49, 1280
rng = np.random.default_rng(0)
lens = np.where(rng.random(B) < 0.15, 49, rng.integers(5, 35, B))
mask = torch.zeros(B, L, dtype=torch.bool)
for i, n in enumerate(lens):
    mask[i, :n] = True
x, pos, y = torch.randn(B, L, D), torch.arange(L).repeat(B, 1), torch.randint(0, 6, (B,))
torch.manual_seed(0)
m = Projector(D, 6, L, 128, 2, 8, 512, 0.0)
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
params = [p for p in m.parameters() if p.requires_grad]
pool = ThreadPoolExecutor(2)
def half(sl):
    _, logits = m(x[sl], pos[sl], mask[sl])
    return torch.autograd.grad(F.cross_entropy(logits, y[sl], reduction="sum") / B, params, allow_unused=True)
def step():
    if mode == "two-halves":
        g1, g2 = pool.map(half, [slice(0, B // 2), slice(B // 2, B)])
        for p, a, b in zip(params, g1, g2):
            p.grad = (0 if a is None else a) + (0 if b is None else b)
    else:
        _, logits = m(x, pos, mask)
        opt.zero_grad()
        F.cross_entropy(logits, y).backward()
    opt.step()
torch.set_num_threads(2 if mode == "intra-op" else 1)
for _ in range(3):
    step()
t = time.perf_counter()
for _ in range(steps):
    step()
print((time.perf_counter() - t) / steps * 1000)
"""

COMPETITOR = """
import numpy as np
a = np.random.default_rng(0).standard_normal((700, 700))
while True:
    a = a @ a
    a /= np.abs(a).max()
"""

MODES = ("intra-op", "one-thread", "two-halves")


def run(mode: str, steps: int, busy: bool) -> float:
    env = dict(os.environ)
    if busy:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = subprocess.run([sys.executable, "-c", STEP, mode, str(steps)], env=env, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--competitors", type=int, default=2)
    args = ap.parse_args()
    alone = {m: run(m, args.steps, False) for m in MODES}
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    procs = [subprocess.Popen([sys.executable, "-c", COMPETITOR], env=env) for _ in range(args.competitors)]
    try:
        time.sleep(2.0)
        busy = {m: run(m, args.steps, True) for m in MODES}
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for m in MODES:
        print(f"{m:10s}: alone {alone[m]:6.1f} ms/step, beside {args.competitors} competitors {busy[m]:6.1f} ms/step "
              f"({busy[m] / alone['intra-op']:.2f}x of intra-op alone)")
    print(f"two-halves alone: {alone['intra-op'] / alone['two-halves']:.2f}x the steps/s of intra-op")
    print(f"ratio intra-op busy / two-halves busy: {busy['intra-op'] / busy['two-halves']:.2f}")


if __name__ == "__main__":
    main()
