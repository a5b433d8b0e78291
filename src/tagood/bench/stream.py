"""Test-time evaluation: IND test and OOD samples fed to a detector as one seeded, shuffled stream.

Test-time methods (AdaNeg, NeurIPS 2024; later ANTS, TANL) adapt to the test samples they have seen, so
their numbers depend on what the stream holds and in which order. The field reports them apart from static
methods, on a stated stream; this module builds that stream and scores it:

* :func:`build_stream`: the stream's order, a seeded permutation of (split, index) pairs of the IND test
  split and the OOD sets; ``id_ood_ratio`` (IND : OOD, e.g. ``1.0``) subsamples the larger side (seeded, each
  OOD set in proportion to its size) to reach the stated ratio; ``None`` keeps every sample (the ratio of the
  split sizes, recorded).
* :func:`evaluate_stream`: feeds the stream to ``det.score_stream`` in batches and returns per-split scores
  (in each split's own sample order, for the included samples) with the order, for ``results.json``.
  ``mode="joint"`` (default): one stream of the IND test split and all OOD sets together, one memory.
  ``mode="per_set"``: AdaNeg's released protocol, a fresh stream (and memory) of the IND test split plus one
  OOD set for each OOD set; the IND scores then differ per OOD set.

Static detectors give the same scores as :meth:`Detector.score` (their ``score_stream`` scores each batch
alone), so running them through a stream is harmless but pointless. Scores: **higher = more OOD**.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tagood.core.featureset import FeatureSet, concat_rows, take_rows

log = logging.getLogger(__name__)

MODES = ("joint", "per_set")


@dataclass
class StreamPlan:
    """One stream: ``order[k] = (split number, sample index)`` of its k-th sample; ``splits`` names the numbers."""

    splits: list[str]
    order: np.ndarray  # (n, 2) int64
    seed: int
    id_ood_ratio: float | None
    ind: str = "test"

    def selected(self, split: str) -> np.ndarray:
        """Sorted sample indices of ``split`` that are in the stream."""
        k = self.splits.index(split)
        return np.sort(self.order[self.order[:, 0] == k, 1])

    def ratio(self) -> float:
        """The stream's realised IND : OOD ratio (IND count / OOD count)."""
        k = self.splits.index(self.ind)
        n_id = int((self.order[:, 0] == k).sum())
        return n_id / max(1, len(self.order) - n_id)

    def to_json(self) -> dict[str, Any]:
        """The stream for ``results.json``: seed, ratios, counts and the order as ``[split, index]`` pairs."""
        return {"seed": self.seed, "id_ood_ratio": self.id_ood_ratio, "realised_ratio": round(self.ratio(), 6),
                "counts": {s: int((self.order[:, 0] == k).sum()) for k, s in enumerate(self.splits)},
                "order": [[self.splits[int(a)], int(b)] for a, b in self.order]}


def build_stream(sizes: Mapping[str, int], ind: str = "test", seed: int = 0, id_ood_ratio: float | None = None) -> StreamPlan:
    """A seeded, shuffled stream over the splits of ``sizes`` (``ind`` = the IND test split).

    ``id_ood_ratio`` = IND count / OOD count wanted; the side in excess is subsampled (seeded; OOD sets keep
    their proportions, each at least one sample). ``None``: all samples.
    """
    if ind not in sizes:
        raise ValueError(f"the IND split {ind!r} is not among the stream's splits {sorted(sizes)}")
    if id_ood_ratio is not None and not id_ood_ratio > 0:
        raise ValueError(f"id_ood_ratio must be > 0 (IND count / OOD count), got {id_ood_ratio}")
    rng = np.random.default_rng(seed)
    splits = [ind] + [s for s in sizes if s != ind]
    n = {s: int(sizes[s]) for s in splits}
    take = dict(n)
    n_ood = sum(n[s] for s in splits[1:])
    if id_ood_ratio is not None and n_ood > 0 and n[ind] > 0:
        if n[ind] / n_ood > id_ood_ratio:  # too many IND samples
            take[ind] = max(1, int(round(id_ood_ratio * n_ood)))
        else:
            want = max(len(splits) - 1, int(round(n[ind] / id_ood_ratio)))
            for s in splits[1:]:
                take[s] = max(1, min(n[s], int(round(want * n[s] / n_ood))))
    parts = []
    for k, s in enumerate(splits):
        idx = np.arange(n[s]) if take[s] >= n[s] else np.sort(rng.choice(n[s], take[s], replace=False))
        parts.append(np.stack([np.full(len(idx), k), idx], axis=1))
    order = np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)
    order = order[rng.permutation(len(order))]
    return StreamPlan(splits, order, int(seed), id_ood_ratio, ind)


def stream_batches(plan: StreamPlan, data: Mapping[str, FeatureSet], fields: tuple[str, ...],
                   batch_size: int = 256) -> Iterator[FeatureSet]:
    """The stream's samples in order, ``batch_size`` at a time, as FeatureSets holding ``fields``."""
    for name in plan.splits:
        for f in fields:
            if getattr(data[name], f, None) is None:
                raise ValueError(f"stream: split '{name}' has no '{f}'; load or extract it before streaming "
                                 "(streamed cache fields must be loaded: FeatureSet.load_streamed)")
    for a in range(0, len(plan.order), batch_size):
        chunk = plan.order[a : a + batch_size]
        kw: dict[str, Any] = {}
        for f in fields:
            parts = []
            for k in np.unique(chunk[:, 0]):
                pos = np.flatnonzero(chunk[:, 0] == k)
                parts.append((pos, take_rows(getattr(data[plan.splits[int(k)]], f), chunk[pos, 1])))
            back = np.argsort(np.concatenate([p for p, _ in parts]), kind="stable")
            kw[f] = take_rows(concat_rows([v for _, v in parts]), back)
        yield FeatureSet(name="stream", **kw)


@dataclass
class StreamResult:
    """Scores of a detector on a stream (or, ``per_set``, one stream per OOD set).

    ``ood_scores[name]``: scores of OOD set ``name`` (its included samples, in its own order);
    ``id_scores[name]``: the IND test scores to compare them with (the same array for every set in ``joint``
    mode); ``index[split]``: which samples of each split were included; ``plans``: the stream(s).
    """

    mode: str
    id_scores: dict[str, np.ndarray]
    ood_scores: dict[str, np.ndarray]
    index: dict[str, np.ndarray]
    plans: dict[str, StreamPlan] = field(default_factory=dict)

    def rows(self, method: str) -> list[dict[str, Any]]:
        """``results.json`` rows (percent), one per OOD set, as :func:`tagood.bench.scores.metric_rows` makes them."""
        from tagood.bench.scores import metric_rows

        out: list[dict[str, Any]] = []
        for name, s in self.ood_scores.items():
            out += metric_rows(method, self.id_scores[name], {name: s})
        return out

    def split_scores(self, ind: str = "test") -> dict[str, np.ndarray]:
        """Per-split scores for ``scores.npz``: ``ind`` and each OOD set (``per_set``: ``<ind>@<set>`` per set)."""
        if self.mode == "joint":
            first = next(iter(self.id_scores.values()), np.zeros(0))
            return {ind: first, **self.ood_scores}
        return {**{f"{ind}@{k}": v for k, v in self.id_scores.items()}, **self.ood_scores}

    def to_json(self) -> dict[str, Any]:
        """The stream record for ``results.json`` (``meta.streams[method]``)."""
        return {"mode": self.mode, "streams": {k: p.to_json() for k, p in self.plans.items()}}


def evaluate_stream(det: Any, test: FeatureSet, ood: Mapping[str, FeatureSet], seed: int = 0,
                    id_ood_ratio: float | None = None, batch_size: int = 256, mode: str = "joint",
                    ind: str = "test") -> StreamResult:
    """Score a fitted detector on a seeded, shuffled stream of ``test`` (IND) and the ``ood`` sets.

    Returns per-split scores (higher = more OOD) and the stream order(s). ``mode``: ``"joint"`` (one stream,
    all OOD sets) or ``"per_set"`` (one stream per OOD set, IND test + that set; AdaNeg's released protocol).
    """
    if mode not in MODES:
        raise ValueError(f"stream mode must be one of {MODES}, got {mode!r}")
    fields = tuple(sorted(det.requires))
    groups = {"joint": dict(ood)} if mode == "joint" else {name: {name: fs} for name, fs in ood.items()}
    id_scores: dict[str, np.ndarray] = {}
    ood_scores: dict[str, np.ndarray] = {}
    index: dict[str, np.ndarray] = {}
    plans: dict[str, StreamPlan] = {}
    for key, sets in groups.items():
        data = {ind: test, **sets}
        plan = build_stream({k: len(v) for k, v in data.items()}, ind, seed, id_ood_ratio)
        s = np.asarray(det.score_stream(stream_batches(plan, data, fields, batch_size)), dtype=np.float64)
        if len(s) != len(plan.order):
            raise RuntimeError(f"{getattr(det, 'name', det)} returned {len(s)} stream scores for {len(plan.order)} samples")
        per: dict[str, np.ndarray] = {}
        for k, name in enumerate(plan.splits):
            at = np.flatnonzero(plan.order[:, 0] == k)
            idx = plan.order[at, 1]
            srt = np.argsort(idx, kind="stable")
            per[name], index[name] = s[at][srt], idx[srt]
        for name in sets:
            ood_scores[name], id_scores[name] = per[name], per[ind]
        plans[key] = plan
        log.info("stream %s: %d samples (IND:OOD %.3f), seed %d", key, len(plan.order), plan.ratio(), seed)
    if mode == "per_set" and id_ood_ratio is not None:
        index.pop(ind, None)  # the IND subsample differs per stream: see plans
    return StreamResult(mode, id_scores, ood_scores, index, plans)
