"""Per-sample OOD scores of a benchmark run, ``scores.npz`` beside ``results.json``.

Keys: ``score/<method>/<split>`` (float64, higher = more OOD; ``split`` is ``test`` for the IND test
set or an OOD set's name) and ``id/<split>`` (the samples' file paths or source identifiers, in
score order). The metric rows of ``results.json`` are a function of these arrays
(:func:`metric_rows`), so tables can be recomputed, re-split or tested for significance later
without touching the models (``tagood metrics RUN_DIR``).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tagood.errors import InputError
from tagood.metrics import ood_metrics
from tagood.runtime.fileio import NotRegularFileError, atomic_open, open_regular

SCORES_FILE = "scores.npz"
IND_SPLIT = "test"


def metric_rows(method: str, s_id: np.ndarray, s_ood: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """One results row per OOD set: every metric of :func:`tagood.metrics.ood_metrics`
    (:data:`tagood.metrics.METRIC_NAMES`, including the average-precision ``aupr_in`` / ``aupr_out`` and the
    trapezoid ``aupr_in_trapz`` / ``aupr_out_trapz`` of OpenOOD / pytorch-ood), in percent."""
    return [{"method": method, "ood": name, **{k: 100.0 * v for k, v in ood_metrics(s_id, s).items()}}
            for name, s in s_ood.items()]


def save_scores(path: str | Path, scores: Mapping[str, Mapping[str, np.ndarray]],
                ids: Mapping[str, Sequence[str] | None] | None = None) -> Path:
    """Write ``scores[method][split]`` and ``ids[split]`` to ``path`` atomically (temp file + rename)."""
    arrays: dict[str, np.ndarray] = {}
    for method, per in scores.items():
        for split, s in per.items():
            if "/" in split or not split:
                raise ValueError(f"split name {split!r}: must be non-empty and without '/'")
            arrays[f"score/{method}/{split}"] = np.asarray(s, dtype=np.float64)
    for split, names in (ids or {}).items():
        if names is not None:
            arrays[f"id/{split}"] = np.asarray([str(n) for n in names], dtype=str)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(p) as f:
        np.savez(f, allow_pickle=False, **arrays)  # float64 and text arrays only: nothing to pickle
    return p


def load_scores(path: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, list[str]]]:
    """``(scores[method][split], ids[split])`` from a file written by :func:`save_scores` (or a run
    directory holding ``scores.npz``).

    Raises:
        tagood.errors.InputError: no such file, not a regular file (a FIFO or device is refused, never waited on),
            not a readable ``.npz`` of numbers and text, or no score arrays in it; the message names the file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / SCORES_FILE
    if not os.path.lexists(p):
        raise InputError(f"{p}: no per-sample scores here (benchmark runs write {SCORES_FILE} beside results.json)")
    scores: dict[str, dict[str, np.ndarray]] = {}
    ids: dict[str, list[str]] = {}
    fix = f"pass a run folder or the {SCORES_FILE} a benchmark run wrote (`tagood bench --out RUN`)"
    try:
        with open_regular(p) as f, np.load(f, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise InputError(f"{p} holds a single array, not the named arrays of a {SCORES_FILE}; {fix}")
            for key in z.files:
                kind, _, rest = key.partition("/")
                if kind == "score":
                    method, _, split = rest.rpartition("/")
                    scores.setdefault(method, {})[split] = np.asarray(z[key], dtype=np.float64)
                elif kind == "id":
                    ids[rest] = [str(x) for x in z[key]]
    except NotRegularFileError as e:
        raise InputError(f"{e}; {fix}") from None
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as e:
        raise InputError(f"{p} is not a readable {SCORES_FILE} ({type(e).__name__}); {fix}") from None
    if not scores:
        raise InputError(f"{p} holds no 'score/<method>/<split>' arrays")
    return scores, ids


def rows_from_scores(scores: Mapping[str, Mapping[str, np.ndarray]], ind: str = IND_SPLIT) -> list[dict[str, Any]]:
    """The metric rows of every method: its ``ind`` scores against each of its other splits.

    Raises:
        tagood.errors.InputError: a method has no ``ind`` split, or no method has any other split (no OOD set).
    """
    rows: list[dict[str, Any]] = []
    for method, per in scores.items():
        if ind not in per:
            raise InputError(f"method {method!r} has no scores on the IND split {ind!r} (splits: {sorted(per)}); pass the "
                             "IND split's name (`tagood metrics --ind NAME`)")
        rows += metric_rows(method, per[ind], {k: v for k, v in per.items() if k != ind})
    if scores and not rows:  # every method holds the IND split alone: an empty table would look like a result
        raise InputError(f"the scores hold no OOD split, only the IND split {ind!r} (methods: {sorted(scores)}); the "
                         "metrics compare IND scores with OOD scores: score at least one OOD set, or pass the IND "
                         "split's name if it is not "
                         f"{ind!r} (`tagood metrics --ind NAME`)")
    return rows
