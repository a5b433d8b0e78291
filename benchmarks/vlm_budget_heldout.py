"""Held-out check of the embedded benchmarks' text-candidate budget (issue 13): NegLabel, CSP and KR-NFT with the
demo defaults (``max_candidates`` 5,000; NegLabel / KR-NFT keep ``n_neg`` 1,000; KR-NFT cuts 16 crops per image and
takes the top / bottom 4) against the earlier 10,000 / 2,000 and 32 / 8 / 8, on data the test sets play no part in.

IND: training images of the benchmark that no vision-language method trains on (outside every method's seeded
few-shot picks). Pseudo-OOD: jigsaw-shuffled versions of *other* such images (3x3 patches, as FeatureNorm's
pseudo-OOD), extracted here. Both settings are fitted on the same few-shot picks, as the runner fits them. Printed
per method: AUROC and FPR95 (IND+) of both settings, the paired-bootstrap difference ``new - old`` with its 95%
interval (1,000 draws), the Spearman correlation of the two settings' scores on the held-out IND images, and each
fit's wall time (the first fit of a candidate list encodes it: the text-embedding cache starts empty; KR-NFT reuses
NegLabel's list, so its fit times are crops + training). Last: the summed fit times, old / new.

    .venv/bin/python benchmarks/vlm_budget_heldout.py [--benchmark scenes] [--n 300]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

PAIRS = {  # method -> (the demo default now, the setting before)
    "neglabel": ("neglabel", "neglabel[max_candidates=10000,n_neg=2000]"),
    "csp": ("csp", "csp[max_candidates=10000]"),
    "krnft": ("krnft", "krnft[max_candidates=10000,n_neg=2000,n_crops=32,k_in=8,k_out=8]"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="scenes")
    ap.add_argument("--n", type=int, default=300, help="held-out IND images, and as many jigsaw images of others")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tagood-vlm-budget-") as tmp:
        os.environ["TAGOOD_HOME"] = str(Path(tmp) / "home")  # an empty text-embedding cache: fit times include encoding
        run(args.benchmark, args.n, Path(tmp) / "cache")


def run(benchmark: str, n: int, cache_root: Path) -> None:
    from scipy.stats import spearmanr

    from tagood.bench.config import builtin
    from tagood.bench.intervals import paired_difference
    from tagood.bench.runner import prepare
    from tagood.data import JigsawSource, SubsetSource
    from tagood.detectors.vlm.base import few_shot_indices
    from tagood.extract import extract_split

    cfg = builtin(benchmark)
    specs = [s for pair in PAIRS.values() for s in pair]
    state, dets = prepare(cfg, cache_root, "cpu", progress=False, methods=specs)
    ctx, train = state.context, state.splits["train"]
    assert ctx is not None and ctx.dual_encoder is not None and state.vlm_train is not None
    fs = train.features
    picks = np.unique(np.concatenate([few_shot_indices(fs.labels, d.shots, getattr(d, "seed", cfg.seed)) for d in dets
                                      if hasattr(d, "shots")]))
    rest = np.setdiff1d(np.arange(len(fs)), picks)
    order = np.random.default_rng(cfg.seed).permutation(rest)
    if len(order) < 2 * n:
        raise SystemExit(f"only {len(order)} held-out training images; lower --n")
    ind_rows, jig_rows = np.sort(order[:n]), np.sort(order[n : 2 * n])
    ind = fs.subset(ind_rows)
    ctx.dual_encoder.attach(ind)
    jig_src = JigsawSource(SubsetSource(train.source, train.reader.indices[jig_rows]), seed=cfg.seed)
    reader = extract_split(jig_src, state.backbone, cache_root, split=f"{cfg.name}-heldout-jigsaw", fields=["features"],
                           progress=False)
    jig = reader.to_featureset(["features"], name="heldout-jigsaw")
    ctx.dual_encoder.attach(jig)
    print(f"{benchmark}: {len(picks)} few-shot training images; held-out IND {len(ind)}, jigsaw pseudo-OOD {len(jig)} "
          f"(of other held-out training images)")

    by_spec = {getattr(d, "spec", d.name): d for d in dets}
    scores: dict[str, dict[str, np.ndarray]] = {}
    fit_s: dict[str, float] = {}
    for spec in specs:  # new, old, new, old, ...
        d = by_spec[spec]
        t = time.perf_counter()
        d.fit(state.vlm_train, ctx)
        fit_s[spec] = time.perf_counter() - t
        scores[spec] = {"test": d.score(ind), "jigsaw": d.score(jig)}
    for method, (new, old) in PAIRS.items():
        diff = paired_difference(scores[new], scores[old], n_boot=1000, seed=cfg.seed)["jigsaw"]
        rho = spearmanr(scores[new]["test"], scores[old]["test"]).statistic
        cells = []
        for m in ("auroc", "fpr95"):
            r = diff[m]
            cells.append(f"{m.upper()} {r['a']:.2f} vs {r['b']:.2f} ({r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}])")
        print(f"{method:9s} new vs old: {'; '.join(cells)}; Spearman of held-out IND scores {rho:.3f}; "
              f"fit {fit_s[new]:.1f} s vs {fit_s[old]:.1f} s")
    t_new = sum(fit_s[new] for new, _ in PAIRS.values())
    t_old = sum(fit_s[old] for _, old in PAIRS.values())
    print(f"fit time of the three methods, old / new: {t_old:.1f} / {t_new:.1f} s = {t_old / t_new:.2f}")


if __name__ == "__main__":
    main()
