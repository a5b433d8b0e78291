"""The IND linear head: a multinomial logistic regression on IND training features.

The embedded benchmarks' IND classes are not the backbone's ImageNet classes, so logit-based
detectors (MSP, Energy, ODIN, ReAct, ...) score with the logits of a linear head fitted on IND
training features, as a fine-tuned last layer would give.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from tagood.types import LinearHead

log = logging.getLogger(__name__)


def fit_linear_head(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None, weight_decay: float = 1e-3,
                    max_iter: int = 200, device: str = "cpu", seed: int = 0) -> LinearHead:
    """Fit softmax regression (L2 penalty ``weight_decay``) with full-batch L-BFGS; deterministic.

    Features are standardised for the optimisation; the standardisation is folded into the
    returned weight and bias, so the head acts on raw features.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_linear_head: {len(x)} features, {len(y)} labels")
    if (y < 0).any():
        raise ValueError("fit_linear_head: labels must be >= 0 (IND classes)")
    c = int(num_classes or y.max() + 1)
    mu = x.mean(0)
    sd = x.std(0) + 1e-6
    g = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor((x - mu) / sd, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, device=device)
    w = (torch.randn(c, x.shape[1], generator=g) * 0.01).to(device).requires_grad_(True)
    b = torch.zeros(c, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w.T + b, yt) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    log.debug("linear head: final loss %.4f", float(loss.detach()))
    W = w.detach().cpu().numpy().astype(np.float64) / sd  # fold standardisation
    B = b.detach().cpu().numpy().astype(np.float64) - W @ mu
    return LinearHead(W.astype(np.float32), B.astype(np.float32))


def head_accuracy(head: LinearHead, features: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (fraction) of ``head`` on labelled features."""
    pred = head(features).argmax(1)
    return float((pred == np.asarray(labels)).mean())
