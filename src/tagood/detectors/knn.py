"""KNN (Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022)."""

from __future__ import annotations

import numpy as np
import torch

from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.numeric import l2_normalize
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context


def kth_neighbour_distance(queries: np.ndarray, bank: np.ndarray, k: int, chunk: int = 4096, device: str = "cpu",
                           max_bytes: float = 2**30) -> np.ndarray:
    """Exact Euclidean distance of each (L2-normalised) query to its k-th nearest row of ``bank``, in chunks
    of queries whose similarity block stays under ``max_bytes`` (1.28M ImageNet rows: ~200 queries)."""
    chunk = int(max(1, min(chunk, max_bytes // (4 * max(1, len(bank))))))
    b = torch.as_tensor(bank, dtype=torch.float32, device=device)
    out = []
    for i in range(0, len(queries), chunk):
        q = torch.as_tensor(queries[i : i + chunk], dtype=torch.float32, device=device)
        sim = q @ b.T  # unit vectors: ||q - b||^2 = 2 - 2 q.b
        top = torch.topk(sim, k, dim=1).values[:, -1]
        out.append(torch.sqrt(torch.clamp(2.0 - 2.0 * top, min=0.0)).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


@register("knn")
class KNN(Detector):
    """Distance to the k-th nearest IND training feature after L2 normalisation (no class labels).
    k = 50 (the paper's CIFAR setting, suited to small IND sets; the paper uses k = 1000 for the full
    ImageNet train set, and k = 10 with ``alpha`` = 1% of it); ``alpha`` subsamples the bank (seeded).
    Score = ||z - z_(k)|| (higher = more OOD)."""

    requires = frozenset({"features"})

    def __init__(self, k: int = 50, alpha: float = 1.0) -> None:
        super().__init__(k=k, alpha=alpha)
        self.k, self.alpha = int(k), float(alpha)

    def _fit(self, train: FeatureSet, context: Context) -> None:
        z = l2_normalize(train.features)
        if self.alpha < 1.0:
            rng = np.random.default_rng(context.seed)
            z = z[rng.choice(len(z), size=max(self.k, int(len(z) * self.alpha)), replace=False)]
        if self.k > len(z):
            raise ValueError(f"knn: k={self.k} exceeds the {len(z)} training features")
        self.bank = z.astype(np.float32)
        self.device = context.device

    def _score(self, data: FeatureSet) -> np.ndarray:
        return kth_neighbour_distance(l2_normalize(data.features), self.bank, self.k, device=self.device)
