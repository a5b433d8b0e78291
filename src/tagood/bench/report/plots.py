"""Figures of a benchmark run's per-sample scores (``scores.npz``): for every method the score
histograms of the IND test set and each OOD set beside their ROC curves, and one overview of
every method's average AUROC and FPR95.

ROC convention as in :mod:`tagood.metrics`: IND is the positive class and a sample is accepted
as IND when its OOD score is at most the threshold (higher = more OOD); the curve plots the
fraction of OOD accepted (FPR) against the fraction of IND accepted (TPR); the marked point is
FPR95. Drawn with matplotlib's object API (no global pyplot state, no display needed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tagood.metrics import ood_metrics
from tagood.runtime.fileio import atomic_write_with


def roc_curve_ind(s_id: np.ndarray, s_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` over every distinct threshold, from (0, 0) to (1, 1): the fractions of OOD and of
    IND samples with score <= threshold (ties at a threshold are accepted together)."""
    s_id, s_ood = np.sort(np.asarray(s_id, np.float64)), np.sort(np.asarray(s_ood, np.float64))
    t = np.unique(np.concatenate([s_id, s_ood]))
    tpr = np.searchsorted(s_id, t, side="right") / len(s_id)
    fpr = np.searchsorted(s_ood, t, side="right") / len(s_ood)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def fpr95_index(tpr: np.ndarray) -> int:
    """The ROC point of FPR95: the first (smallest) threshold that accepts at least 95% of IND."""
    return int(np.searchsorted(tpr, 0.95 - 1e-12))


def safe_name(name: str) -> str:
    """A file-name-safe form of a method spec: ``tagood[epochs=2]`` -> ``tagood_epochs=2``."""
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", name).strip("_") or "method"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_method(method: str, per: Mapping[str, np.ndarray], path: str | Path, ind: str = "test") -> Path:
    """One PNG: score histograms (IND and each OOD set) and ROC curves with AUROC / FPR95 in the legend."""
    fig = _figure(11, 4)
    ax_h, ax_r = fig.subplots(1, 2)
    s_id = np.asarray(per[ind], np.float64)
    finite = np.concatenate([np.asarray(v, np.float64) for v in per.values()])
    finite = finite[np.isfinite(finite) & (np.abs(finite) < 1e11)]  # TagOOD's no-tag score (1e12) would squash the axis
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 50)
    def label(name: str, s: np.ndarray, extra: str = "") -> str:
        off = int(np.sum(s > bins[-1]))  # e.g. TagOOD's no-tag score: drawn in the last bin
        return f"{name} ({extra}n={len(s)}" + (f"; {off} off the axis, in the last bin)" if off else ")")

    ax_h.hist(np.clip(s_id, bins[0], bins[-1]), bins=bins, density=True, alpha=0.45, color="0.4",
              label=label(ind, s_id, "IND, "))
    for k, (name, s) in enumerate((n, np.asarray(v, np.float64)) for n, v in per.items() if n != ind):
        color = f"C{k}"
        ax_h.hist(np.clip(s, bins[0], bins[-1]), bins=bins, density=True, histtype="step", linewidth=1.5, color=color,
                  label=label(name, s))
        m = ood_metrics(s_id, s)
        fpr, tpr = roc_curve_ind(s_id, s)
        ax_r.plot(fpr, tpr, linewidth=1.5, color=color,
                  label=f"{name}: AUROC {100 * m['auroc']:.2f}, FPR95 {100 * m['fpr95']:.2f}")
        i = fpr95_index(tpr)
        ax_r.plot([fpr[i]], [tpr[i]], "o", color=color, markersize=4)
    ax_h.set(title=f"{method}: scores (higher = more OOD)", xlabel="OOD score", ylabel="density")
    ax_h.legend(fontsize=7)
    ax_r.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
    ax_r.axhline(0.95, color="grey", linewidth=0.5)
    ax_r.set(title="ROC (IND positive)", xlabel="FPR: OOD accepted as IND", ylabel="TPR: IND accepted",
             xlim=(0, 1), ylim=(0, 1.01))
    ax_r.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(p, lambda tmp: fig.savefig(tmp, format="png"))  # a regular file, atomically (issue 23)
    return p


def plot_overview(results: Mapping[str, Any], path: str | Path) -> Path:
    """Average AUROC and FPR95 of every method (from the ``"average"`` rows), best AUROC on top."""
    avg = [r for r in results["rows"] if r["ood"] == "average"]
    avg.sort(key=lambda r: r["auroc"])
    fig = _figure(10, 0.9 + 0.3 * len(avg))
    ax_a, ax_f = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(avg))
    ax_a.barh(y, [r["auroc"] for r in avg], color="tab:blue")
    ax_f.barh(y, [r["fpr95"] for r in avg], color="tab:orange")
    ax_a.set_yticks(y, [r["method"] for r in avg], fontsize=8)
    ax_a.set(title="average AUROC (higher is better)", xlim=(0, 100))
    ax_f.set(title="average FPR95 (lower is better)", xlim=(0, 100))
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(p, lambda tmp: fig.savefig(tmp, format="png"))  # a regular file, atomically (issue 23)
    return p


def write_plots(results: Mapping[str, Any], scores: Mapping[str, Mapping[str, np.ndarray]], out_dir: str | Path,
                ind: str = "test") -> list[Path]:
    """``out_dir/overview.png`` and ``out_dir/<method>.png`` for every method with scores."""
    out = Path(out_dir)
    paths = [plot_overview(results, out / "overview.png")]
    for method, per in scores.items():
        paths.append(plot_method(method, per, out / f"{safe_name(method)}.png", ind))
    return paths
