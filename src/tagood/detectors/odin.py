"""ODIN (Liang, Li & Srikant, "Enhancing the Reliability of Out-of-distribution Image Detection in Neural
Networks", ICLR 2018).

Temperature scaling and input perturbation: ``x' = x - eps * sign(grad_x CE(f(x) / T, argmax f(x)))``, then
``score(x) = -max_c softmax(f(x') / T)_c``, **higher = more OOD**. ``f`` is a differentiable model images -> IND
logits (``context.model``): ODIN needs it at score time, so it is not saved with the detector -- give it again with
``tagood.detectors.load(directory, context=tagood.Context(model=...))`` or ``det.attach(tagood.Context(model=...))``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.validation import NonNegFloat, PixelStd, PosFloat, PosInt
from tagood.detectors.base import ContextError, Detector
from tagood.detectors.options import DetectorOptions
from tagood.detectors.registry import register

log = logging.getLogger(__name__)

PAPER = ("Liang, Li & Srikant, Enhancing the Reliability of Out-of-distribution Image Detection in Neural Networks, "
         "ICLR 2018")

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


def pixel_stds(model: Any, pixel_std: float | Sequence[float] | None = None) -> tuple[float, ...]:
    """The std(s) ``eps`` is divided by: ``pixel_std`` given, else the one ``model`` declares, else
    EfficientNet-Lite's 128/255."""
    if pixel_std is not None:
        std = tuple(float(v) for v in np.atleast_1d(np.asarray(pixel_std, dtype=np.float64)))
    else:
        std = declared_pixel_std(model) or (LITE_PIXEL_STD,)
    if any(s <= 0 for s in std):
        raise ValueError(f"odin: pixel_std must be positive, got {std}")
    return std


def _step(x: torch.Tensor, epsilon: float, std: tuple[float, ...]) -> torch.Tensor:
    """``eps / std`` broadcast over the channels of ``x`` (B,C,...)."""
    if len(std) == 1:
        return torch.full((), epsilon / std[0], dtype=x.dtype, device=x.device)
    if x.ndim < 2 or x.shape[1] != len(std):
        raise ValueError(f"odin: {len(std)} per-channel pixel_std values for inputs of shape {tuple(x.shape)}")
    s = torch.tensor([epsilon / v for v in std], dtype=x.dtype, device=x.device)
    return s.view(1, -1, *([1] * (x.ndim - 2)))


def score_batch(model: Any, x: np.ndarray, temperature: float, epsilon: float, std: tuple[float, ...],
                device: torch.device | str = "cpu") -> np.ndarray:
    """ODIN scores ``(B,)`` float64 of one batch of preprocessed images ``(B, 3, H, W)`` (higher = more OOD).
    The perturbed pass runs without gradients, through ``model.predict`` when the model has it (a faster
    inference engine, :class:`tagood.detectors.head.Classifier`)."""
    xt = torch.as_tensor(x, dtype=torch.float32, device=device).requires_grad_(True)
    with torch.enable_grad():
        logits = model(xt) / temperature
        loss = torch.nn.functional.cross_entropy(logits, logits.argmax(1))
        (grad,) = torch.autograd.grad(loss, xt)
    x2 = xt.detach() - _step(xt, epsilon, std) * torch.sign(grad)
    predict = getattr(model, "predict", None)
    with torch.no_grad():  # the perturbed pass needs no gradient: the model's fast inference path when it has one
        z = predict(x2) if predict is not None else model(x2).double()
        p = torch.softmax(z.double() / temperature, dim=1)
    return -p.max(dim=1).values.cpu().numpy()


def score(images: Any, model: Any, temperature: float = 1000.0, epsilon: float = 0.0014,
          pixel_std: float | Sequence[float] | None = None, batch_size: int = 8, device: str = "cpu") -> np.ndarray:
    """ODIN OOD score of preprocessed images: ``-max softmax(f(x') / T)`` with the perturbed input ``x'``,
    **higher = more OOD**.

    Args:
        images: an array ``(N, 3, H, W)`` of preprocessed images, or an image stream with ``batches(size)``.
        model: a differentiable torch callable images -> IND logits.
        temperature: ``T`` (the paper: 1000). epsilon: the step in [0, 1] pixel units (0.0014).
        pixel_std: the preprocessing's std(s) the step is divided by (:func:`pixel_stds`).
        batch_size: images per gradient pass; a score does not depend on its batch.
        device: the torch device.
    Returns:
        ``(N,)`` float64 scores.
    """
    std = pixel_stds(model, pixel_std)
    dev = torch.device(device)
    batches: Iterable[np.ndarray] = (images.batches(batch_size) if hasattr(images, "batches") else
                                     (images[i : i + batch_size] for i in range(0, len(images), batch_size)))
    parts = [score_batch(model, b, temperature, epsilon, std, dev) for b in batches]
    return np.concatenate(parts) if parts else np.zeros(0)


@register("odin")
class ODIN(Detector):
    """Temperature scaling and input perturbation through the backbone and the IND head (``context.model``:
    differentiable images -> IND logits; for RAM / CLIP taggers their ``torch_module()`` = the Swin encoder / ViT
    vision tower, then the IND linear head). Score = ``-max softmax(f(x') / T)`` (**higher = more OOD**).

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

    Learns nothing from the training split (no ``fit`` needed), but needs the model: ``fit(train, context)`` or
    ``attach(context)`` with ``context.model``; a saved ODIN gets it at ``load(directory, context=...)``.
    """

    class Options(DetectorOptions):
        temperature: PosFloat = Field(1000.0, description="softmax temperature T (the paper: 1000)")
        epsilon: NonNegFloat = Field(0.0014, description="input perturbation step in [0, 1] pixel units (the paper's "
                                                         "DenseNet/CIFAR-10 value, OpenOOD's ImageNet setting)")
        pixel_std: PixelStd | None = Field(None, description="the preprocessing's pixel std(s) the step is divided by; "
                                                             "none: the model's own, else EfficientNet-Lite's 128/255",
                                           json_schema_extra={"type_text": "number or list of numbers or none"})
        batch_size: PosInt | None = Field(None, description="images per gradient pass; none: 8 on the CPU, 16 on an accelerator")

    options: Options
    paper: ClassVar[str] = PAPER
    requires = frozenset({"images"})
    fit_requires = frozenset()
    context_requires = frozenset({"model"})
    requires_fit = False
    model: Any = None
    device: torch.device | None = None
    std: tuple[float, ...] = ()

    @property
    def t(self) -> float:
        """The temperature ``T``."""
        return self.options.temperature

    @property
    def eps(self) -> float:
        """The perturbation step ``epsilon``."""
        return self.options.epsilon

    @property
    def bs(self) -> int:
        """The batch size scored with: ``batch_size``, else 8 on the CPU and 16 on the device it was attached to."""
        device = self.device
        return self.options.batch_size or (16 if device is not None and device.type != "cpu" else 8)

    def _attach(self, context: Context) -> None:
        if context.model is None:
            raise ContextError("odin needs a differentiable torch model images -> IND logits: pass "
                               "context=tagood.Context(model=...), e.g. tagood.detectors.head.Classifier(backbone, head)")
        self.model = context.model
        self.device = torch.device(context.device)
        self.std = pixel_stds(self.model, self.options.pixel_std)
        if self.options.pixel_std is None:
            log.info("odin: step eps=%g divided by pixel std %s", self.eps, [round(s, 4) for s in self.std])

    def score_batch(self, x: np.ndarray) -> np.ndarray:
        """ODIN scores (B,) float64 of one batch of preprocessed images."""
        return score_batch(self.model, x, self.t, self.eps, self.std, self.device or "cpu")

    def _score(self, data: FeatureSet) -> np.ndarray:
        if self.model is None:
            raise ContextError("odin scores through a differentiable model it does not save: call "
                               "det.attach(tagood.Context(model=...)) or det.fit(train, tagood.Context(model=...)) first; "
                               "for a saved one, tagood.detectors.load(directory, context=tagood.Context(model=...))")
        assert data.images is not None
        parts = [self.score_batch(b) for b in data.images.batches(self.bs)]
        return np.concatenate(parts) if parts else np.zeros(0)
