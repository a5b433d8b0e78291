"""ODIN (Liang, Li & Srikant, "Enhancing the Reliability of Out-of-distribution Image Detection in
Neural Networks", ICLR 2018)."""

from __future__ import annotations

import numpy as np
import torch

from tagood.detectors.base import Detector, register
from tagood.types import Context, FeatureSet


@register("odin")
class ODIN(Detector):
    """Temperature scaling (T = 1000) and input perturbation x' = x - eps * sign(grad_x CE(f(x)/T, argmax)),
    through the backbone and the IND head (``context.model``: differentiable images -> IND logits).
    eps = 0.0014 in [0,1] pixel units (OpenOOD's ImageNet setting); it is divided by the
    normalisation std of the backbone's preprocessing (``pixel_std``; EfficientNet-Lite0:
    (x - 127) / 128 gives std = 128/255) because the gradient step is taken on normalised input.
    Score = -max softmax(f(x') / T) (higher = more OOD)."""

    requires = frozenset({"images"})
    fit_requires = frozenset()
    context_requires = frozenset({"model"})

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014, pixel_std: float = 128.0 / 255.0,
                 batch_size: int = 32) -> None:
        super().__init__(temperature=temperature, epsilon=epsilon, pixel_std=pixel_std, batch_size=batch_size)
        self.t, self.eps, self.std, self.bs = float(temperature), float(epsilon), float(pixel_std), int(batch_size)

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.model = context.model
        self.device = torch.device(context.device)

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(x, dtype=torch.float32, device=self.device).requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(xt) / self.t
            loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1))
            (grad,) = torch.autograd.grad(loss, xt)
        x2 = xt.detach() - (self.eps / self.std) * torch.sign(grad)
        with torch.no_grad():
            p = torch.softmax(self.model(x2).double() / self.t, dim=1)
        return -p.max(dim=1).values.cpu().numpy()

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert data.images is not None
        parts = [self.score_batch(b) for b in data.images.batches(self.bs)]
        return np.concatenate(parts) if parts else np.zeros(0)
