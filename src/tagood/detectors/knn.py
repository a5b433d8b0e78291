"""KNN (Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022).

The distance of a sample's L2-normalised feature to its k-th nearest L2-normalised IND training feature (no class
labels): ``score(x) = ||z - z_(k)||`` with ``z = x / ||x||``, **higher = more OOD**.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from numpy.typing import ArrayLike
from pydantic import Field

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.numeric import l2_normalize
from tagood.core.validation import OpenFraction, PosInt
from tagood.detectors.base import Detector, field_array
from tagood.detectors.knn_search import PrunedBank, kth_largest_products
from tagood.detectors.options import DetectorOptions, OptionError
from tagood.detectors.registry import register

PAPER = "Sun, Ming, Zhu & Li, Out-of-Distribution Detection with Deep Nearest Neighbors, ICML 2022"


def kth_neighbour_distance(queries: np.ndarray, bank: np.ndarray, k: int, chunk: int = 4096, device: str = "cpu",
                           max_bytes: float = 2**30, pruned: PrunedBank | None = None) -> np.ndarray:
    """Exact Euclidean distance of each (L2-normalised) query to its k-th nearest row of ``bank``, in chunks
    of queries whose similarity block stays under ``max_bytes`` (1.28M ImageNet rows: ~200 queries).

    On the CPU the search runs through numpy's BLAS (:func:`tagood.detectors.knn_search.kth_largest_products`),
    pruned when ``pruned`` is given (exact either way); elsewhere with ``torch.topk`` on the device."""
    chunk = int(max(1, min(chunk, max_bytes // (4 * max(1, len(bank))))))
    if torch.device(device).type == "cpu":
        tops: Iterator[torch.Tensor] = (torch.from_numpy(t) for t in kth_largest_products(
            queries, np.ascontiguousarray(bank, np.float32), k, chunk, pruned))
    else:
        b = torch.as_tensor(bank, dtype=torch.float32, device=device)
        tops = (torch.topk(torch.as_tensor(queries[i : i + chunk], dtype=torch.float32, device=device) @ b.T,
                           k, dim=1).values[:, -1] for i in range(0, len(queries), chunk))
    out = []
    for top in tops:
        # unit vectors: ||q - b||^2 = 2 - 2 q.b
        out.append(torch.sqrt(torch.clamp(2.0 - 2.0 * top, min=0.0)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _normalized32(x: ArrayLike) -> np.ndarray:
    """``x`` L2-normalised per row for the float32 search: float32 / float16 input normalised in float32 (no float64
    copy of a training split; the search is float32 anyway), other input in float64 then rounded to float32."""
    a = np.asarray(x)
    if a.dtype in (np.float32, np.float16):
        return l2_normalize(a, dtype=np.float32)
    return l2_normalize(a).astype(np.float32)


def make_bank(train_features: ArrayLike, k: int = 50, alpha: float = 1.0, seed: int = 0) -> np.ndarray:
    """KNN's bank: the L2-normalised IND training features as float32 (normalised in float32 when they are float32
    or float16, else in float64); with ``alpha < 1`` a seeded random
    ``max(k, int(N * alpha))`` of them (the paper's ImageNet setting keeps 1%)."""
    z = _normalized32(train_features)
    if alpha < 1.0:
        rng = np.random.default_rng(seed)
        z = z[rng.choice(len(z), size=max(k, int(len(z) * alpha)), replace=False)]
    return z.astype(np.float32)


def score(features: ArrayLike, bank: np.ndarray, k: int = 50, device: str = "cpu",
          pruned: PrunedBank | None = None) -> np.ndarray:
    """KNN OOD score: the Euclidean distance of each L2-normalised feature to its ``k``-th nearest row of ``bank``,
    **higher = more OOD**.

    Args:
        features: ``(N, D)`` penultimate features (normalised here).
        bank: ``(M, D)`` L2-normalised IND training features, ``M >= k`` (:func:`make_bank`).
        k: the neighbour rank.
        device: the torch device of the search.
        pruned: ``PrunedBank.build(bank, k)`` (:mod:`tagood.detectors.knn_search`) for the exact pruned CPU
            search, or None for the brute force. The detector builds it once per bank.
    Returns:
        ``(N,)`` float64 distances in ``[0, 2]``.
    """
    return kth_neighbour_distance(_normalized32(features), bank, k, device=device, pruned=pruned)


@register("knn")
class KNN(Detector):
    """Distance to the k-th nearest IND training feature after L2 normalisation (no class labels). ``k = 50`` is
    the paper's CIFAR setting, suited to small IND sets (the paper uses k = 1000 on the full ImageNet train set, and
    k = 10 with ``alpha`` = 1% of it). Score = ``||z - z_(k)||`` (higher = more OOD). See :func:`score`."""

    class Options(DetectorOptions):
        k: PosInt = Field(50, description="neighbour rank whose distance is the score (paper: 50 on CIFAR, 1000 on ImageNet)")
        alpha: OpenFraction = Field(1.0, description="fraction of the IND training features kept in the bank (seeded)")

    options: Options
    paper: ClassVar[str] = PAPER
    requires = frozenset({"features"})
    bank: np.ndarray
    device: str = "cpu"
    #: the pruned search's data for ``bank`` (built at the first CPU score, not saved): ``(bank, PrunedBank | None)``
    _pruned: tuple[np.ndarray, PrunedBank | None] | None = None

    def check_data(self, n_train: int, n_classes: int | None = None) -> None:
        """``k`` must not exceed the IND training samples (the bank holds at least ``k`` of them)."""
        if self.options.k > n_train:
            raise OptionError(f"detector 'knn': option k={self.options.k} exceeds the {n_train} IND training samples; "
                              f"use knn[k={max(1, n_train)}] or fewer, or more training images")

    def _attach(self, context: Context) -> None:
        self.device = context.device

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.bank = make_bank(field_array(train, "features"), self.options.k, self.options.alpha, context.seed)

    def _score(self, data: FeatureSet) -> np.ndarray:
        pruned = None
        if torch.device(self.device).type == "cpu":
            if self._pruned is None or self._pruned[0] is not self.bank:
                bank = np.ascontiguousarray(self.bank, dtype=np.float32)
                self._pruned = (self.bank, PrunedBank.build(bank, self.options.k, seed=0))
            pruned = self._pruned[1]
        return score(field_array(data, "features"), self.bank, self.options.k, device=self.device, pruned=pruned)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {"bank": self.bank}, {}

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.bank = arrays["bank"]
