"""ODIN (Liang, Li & Srikant, "Enhancing the Reliability of Out-of-distribution Image Detection in
Neural Networks", ICLR 2018)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context

log = logging.getLogger(__name__)

#: EfficientNet-Lite's preprocessing ``(x - 127) / 128`` in [0,1] pixel units: std = 128/255.
LITE_PIXEL_STD = 128.0 / 255.0


def declared_pixel_std(model: torch.nn.Module) -> tuple[float, ...] | None:
    """The ``pixel_std`` that ``model`` or one of its submodules declares (RAM / CLIP feature modules do:
    their preprocessing's per-channel std), or None."""
    mods = model.modules() if isinstance(model, torch.nn.Module) else [model]
    for m in mods:
        std = getattr(m, "pixel_std", None)
        if std is not None:
            return tuple(float(v) for v in np.atleast_1d(np.asarray(std, dtype=np.float64)))
    return None


@register("odin")
class ODIN(Detector):
    """Temperature scaling and input perturbation ``x' = x - eps * sign(grad_x CE(f(x)/T, argmax f(x)))``,
    through the backbone and the IND head (``context.model``: differentiable images -> IND logits;
    for RAM / CLIP taggers their ``torch_module()`` = the Swin encoder / ViT vision tower, then the
    IND linear head). Score = ``-max softmax(f(x') / T)`` (**higher = more OOD**).

    Defaults: ``T = 1000`` (the paper's choice for every network) and ``eps = 0.0014`` (the paper tunes
    eps on held-out data over 21 values in [0, 0.004]; 0.0014 is its DenseNet/CIFAR-10 value and
    OpenOOD's ImageNet setting). ``eps`` is in [0,1] pixel units and the step is taken on the
    normalised input, so it is divided by the preprocessing's std, per channel as in the authors'
    code: ``pixel_std`` given, else the one ``context.model`` declares (RAM: ImageNet std; CLIP: CLIP
    std), else EfficientNet-Lite's 128/255.

    The perturbed images' logits come from ``context.model.predict`` (no gradients; EfficientNet-Lite's
    onnxruntime engine on the CPU, :class:`tagood.detectors.head.Classifier`) when the model has it, else from a
    no-grad call of ``context.model``. ``batch_size`` (default 8 on the CPU, 16 on accelerators): on 2 CPU
    cores batches of 8 scored 1.15x the images per second of batches of 16 (30.1 vs 26.2 images/s, real scenes,
    five alternated runs; 4: 30.6), and 16 was faster than 32 or 64 (``benchmarks/odin_lean.py``); the
    activations of a small batch stay in the caches. Each image's score does not depend on its batch.
    """

    requires = frozenset({"images"})
    fit_requires = frozenset()
    context_requires = frozenset({"model"})

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014,
                 pixel_std: float | Sequence[float] | None = None, batch_size: int | None = None) -> None:
        super().__init__(temperature=temperature, epsilon=epsilon, pixel_std=pixel_std, batch_size=batch_size)
        self.t, self.eps = float(temperature), float(epsilon)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.pixel_std = pixel_std
        self.std: tuple[float, ...] = ()

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.model = context.model
        self.device = torch.device(context.device)
        if self.pixel_std is not None:
            self.std = tuple(float(v) for v in np.atleast_1d(np.asarray(self.pixel_std, dtype=np.float64)))
        else:
            self.std = declared_pixel_std(self.model) or (LITE_PIXEL_STD,)
            log.info("odin: step eps=%g divided by pixel std %s", self.eps, [round(s, 4) for s in self.std])
        if any(s <= 0 for s in self.std):
            raise ValueError(f"odin: pixel_std must be positive, got {self.std}")

    @property
    def bs(self) -> int:
        """The batch size scored with: ``batch_size``, else 8 on the CPU and 16 on the device it was fitted for."""
        device = getattr(self, "device", None)
        return self.batch_size or (16 if device is not None and device.type != "cpu" else 8)

    def _step(self, x: torch.Tensor) -> torch.Tensor:
        """``eps / std`` broadcast over the channels of ``x`` (B,C,...)."""
        if len(self.std) == 1:
            return torch.full((), self.eps / self.std[0], dtype=x.dtype, device=x.device)
        if x.ndim < 2 or x.shape[1] != len(self.std):
            raise ValueError(f"odin: {len(self.std)} per-channel pixel_std values for inputs of shape {tuple(x.shape)}")
        s = torch.tensor([self.eps / v for v in self.std], dtype=x.dtype, device=x.device)
        return s.view(1, -1, *([1] * (x.ndim - 2)))

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        """ODIN scores (B,) float64 of one batch of preprocessed images."""
        xt = torch.as_tensor(x, dtype=torch.float32, device=self.device).requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(xt) / self.t
            loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1))
            (grad,) = torch.autograd.grad(loss, xt)
        x2 = xt.detach() - self._step(xt) * torch.sign(grad)
        predict = getattr(self.model, "predict", None)
        with torch.no_grad():  # the perturbed pass needs no gradient: the model's fast inference path when it has one
            z = predict(x2) if predict is not None else self.model(x2).double()
            p = torch.softmax(z.double() / self.t, dim=1)
        return -p.max(dim=1).values.cpu().numpy()

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert data.images is not None
        parts = [self.score_batch(b) for b in data.images.batches(self.bs)]
        return np.concatenate(parts) if parts else np.zeros(0)
