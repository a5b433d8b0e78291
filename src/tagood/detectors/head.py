"""The IND linear head: multinomial logistic regression on IND training features.

A benchmark's IND classes are not the backbone's ImageNet classes, so the logit-based detectors (MSP,
MaxLogit, Energy, ODIN, ReAct, ASH, LHAct, ViM) score with the logits of a linear head fitted on IND
training features, as a fine-tuned last layer would give. ``tagood bench`` does exactly this, with these
calls; a user of the Python API gets the benchmark's logits the same way::

    head = fit_head(train)                      # L2-regularised softmax regression, deterministic
    train, test = with_head_logits(train, head), with_head_logits(test, head)
    det = tagood.create("energy").fit(train, Context(head=head))
    scores = det.score(test)                    # higher = more OOD, as in the benchmark

The ``logits`` a backbone extraction carries are the backbone's own (1,000 ImageNet classes); scoring
those gives different numbers from ``tagood bench``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from tagood.core.featureset import FeatureSet
from tagood.core.types import LinearHead, pooled_logits
from tagood.errors import InputError

log = logging.getLogger(__name__)


#: Above this many logits (samples x classes) :func:`fit_linear_head` evaluates its loss in row chunks of about this
#: many logits (4 Mi: 16 MiB float32), so its memory stays flat in N (ImageNet-1K: 1.28M x 1000 would be 5 GB per
#: copy of the logits, and the backward pass holds several).
HEAD_CHUNK_ELEMENTS = 1 << 22


#: Rows per block when :func:`_standardise` reads the features (float64 temporaries of 8 K rows: 96 MiB at width
#: 1,536), so the fit never holds a float64 copy of the whole ``(N, D)`` features.
STANDARDISE_ROWS = 1 << 13


def _column_sums(blocks: Iterator[np.ndarray], width: int) -> np.ndarray:
    """Float64 column sums of row blocks, added row by row in order: numpy's ``a.sum(0)`` of a C-ordered ``(N, D)``
    float64 array with ``D >= 2`` adds its rows in the same order, so the sums equal the whole array's to the last bit
    (a single column numpy sums pairwise: equal when it fits one block, within rounding above)."""
    total: np.ndarray | None = None
    for block in blocks:
        total = np.add.reduce(block if total is None else np.concatenate([total[None], block]), axis=0)
    return total if total is not None else np.zeros(width)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``((x - mu) / sd)`` as float32 with the float64 ``mu`` and ``sd`` of the columns, read in row blocks.

    The numbers equal ``x64 = x.astype(float64); mu = x64.mean(0); sd = x64.std(0)`` and ``((x64 - mu) / sd)`` cast
    to float32 bit for bit (see :func:`_column_sums` for one column), but memory is the float32 result plus a block:
    at ImageNet-1K and RAM's width the float64 copies alone would be 15.7 GB each. Constant columns keep ``sd = 1``.

    Raises:
        ValueError: the features contain NaN or inf.
    """
    n, d = x.shape
    step = STANDARDISE_ROWS

    def blocks(centre: np.ndarray | None = None) -> Iterator[np.ndarray]:
        for a in range(0, n, step):
            block = np.asarray(x[a : a + step], dtype=np.float64)
            if centre is None:
                if not np.isfinite(block).all():
                    raise ValueError("fit_linear_head: features contain NaN or inf")
                yield block
            else:
                block = block - centre
                yield np.multiply(block, block, out=block)

    mu = _column_sums(blocks(), d) / n
    sd = np.sqrt(_column_sums(blocks(mu), d) / n)
    sd = np.where(sd > 1e-8 * max(1.0, float(np.abs(mu).max(initial=0.0))), sd, 1.0)
    z = np.empty((n, d), dtype=np.float32)
    for a in range(0, n, step):
        z[a : a + step] = (np.asarray(x[a : a + step], dtype=np.float64) - mu) / sd
    return z, mu, sd


def fit_linear_head(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None, weight_decay: float = 1e-3,
                    epochs: int = 200, device: str = "cpu", seed: int = 0) -> LinearHead:
    """Fit softmax regression with an L2 penalty by full-batch L-BFGS (strong-Wolfe line search).

    Loss: mean cross-entropy + ``weight_decay / 2 * ||W||^2`` on standardised features (zero mean,
    unit variance per dimension; constant dimensions are left unscaled). ``epochs``: the most
    L-BFGS iterations (each is one or a few full passes over the data). The standardisation is
    folded into the returned weight and bias, so the head acts on **raw** features:
    ``W_raw = W / sd``, ``b_raw = b - W_raw @ mu``. The problem is convex and starts from zero, so
    the result is deterministic (``seed`` fixes torch's RNG for any nondeterministic kernels).
    ``num_classes`` defaults to ``labels.max() + 1``; classes without training samples get
    near-zero weights and a bias pushed down, so they are not predicted. Above :data:`HEAD_CHUNK_ELEMENTS` logits
    (samples x classes) each evaluation sums the same loss and gradient over row chunks (float32 rounding apart, the
    same full-batch problem), so memory does not grow with ``N x C``.
    """
    x = np.asarray(features)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"fit_linear_head needs features (N,D) and labels (N,) with N > 0; got {x.shape} and {y.shape}")
    if (y < 0).any():
        raise ValueError("fit_linear_head: labels must be >= 0 (IND classes); drop unlabelled (-1) samples first")
    c = int(num_classes if num_classes is not None else y.max() + 1)
    if y.max() >= c:
        raise ValueError(f"fit_linear_head: label {int(y.max())} >= num_classes={c}")
    z, mu, sd = _standardise(x)
    torch.manual_seed(seed)
    xt = torch.as_tensor(z, device=device)
    yt = torch.as_tensor(y, device=device)
    w = torch.zeros(c, x.shape[1], device=device, requires_grad=True)
    b = torch.zeros(c, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=int(epochs), history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    n = len(x)
    rows = max(1, HEAD_CHUNK_ELEMENTS // max(1, c))  # rows per chunk when the logits would be large

    def closure() -> torch.Tensor:
        opt.zero_grad()
        if n * c <= HEAD_CHUNK_ELEMENTS:  # one pass, the arithmetic of before (the demo, the tests)
            loss = torch.nn.functional.cross_entropy(xt @ w.T + b, yt) + 0.5 * weight_decay * (w * w).sum()
            loss.backward()
            return loss
        # the same loss and gradient accumulated over row chunks: the (N, C) logits are never held whole
        loss = 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        total = loss.detach()
        for a in range(0, n, rows):
            part = torch.nn.functional.cross_entropy(xt[a : a + rows] @ w.T + b, yt[a : a + rows], reduction="sum") / n
            part.backward()
            total = total + part.detach()
        return total

    loss = opt.step(closure)
    log.debug("linear head: %d samples, %d classes, final loss %.4f", len(x), c, float(loss.detach()))
    W = w.detach().cpu().numpy().astype(np.float64) / sd  # fold the standardisation
    B = b.detach().cpu().numpy().astype(np.float64) - W @ mu
    return LinearHead(W.astype(np.float32), B.astype(np.float32))


def fit_head(train: FeatureSet, class_names: list[str] | None = None, *, num_classes: int | None = None,
             weight_decay: float = 1e-3, epochs: int = 200, seed: int = 0, device: str = "cpu") -> LinearHead:
    """The IND linear head of a labelled training split, as ``tagood bench`` fits it.

    Softmax regression with an L2 penalty on the split's pooled ``features`` and ``labels``
    (:func:`fit_linear_head`: full-batch L-BFGS on standardised features, deterministic). The benchmark
    runner calls exactly this, with the config's ``seed``.

    Args:
        train: the IND training split; needs ``features`` ``(N, D)`` and ``labels`` ``(N,)`` (0..C-1).
        class_names: the IND class names, kept on the head (``head.class_names``).
        num_classes: the number of IND classes (default: the largest label + 1).
        weight_decay: the L2 penalty on the (standardised) weights.
        epochs: the most L-BFGS iterations.
        seed: fixes torch's RNG for any nondeterministic kernel.
        device: the torch device of the fit.

    Returns:
        The head ``logits = features @ weight.T + bias`` over the IND classes, acting on raw features.

    Raises:
        InputError: ``train`` has no ``features`` or no ``labels``, or a label is negative (unlabelled).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> labels = np.arange(90) % 3
        >>> train = FeatureSet(features=3 * np.eye(3, 16)[labels] + rng.normal(size=(90, 16)), labels=labels)
        >>> head = fit_head(train)
        >>> train = with_head_logits(train, head)  # the IND logits tagood bench scores
        >>> train.logits.shape, float((train.logits.argmax(1) == labels).mean()) > 0.9
        ((90, 3), True)
    """
    if train.features is None or train.labels is None:
        have = [f for f in ("features", "labels") if getattr(train, f) is not None]
        raise InputError(f"fit_head needs a training FeatureSet with features and labels (the IND classes); "
                         f"'{train.name}' has {have or 'neither'}: extract it from a labelled image folder "
                         f"(one sub-folder per class) or build FeatureSet(features=..., labels=...)")
    if (np.asarray(train.labels) < 0).any():
        raise InputError(f"fit_head: '{train.name}' has unlabelled (-1) samples; the head is fitted on labelled IND "
                         f"training samples only: pass train.subset(np.flatnonzero(train.labels >= 0))")
    head = fit_linear_head(train.features, train.labels, num_classes=num_classes, weight_decay=weight_decay,
                           epochs=epochs, device=device, seed=seed)
    head.class_names = class_names
    return head


def with_head_logits(fs: FeatureSet, head: LinearHead) -> FeatureSet:
    """``fs`` with ``logits`` = the head's IND logits of its ``features`` (float32), as ``tagood bench`` scores.

    Args:
        fs: a split with pooled ``features`` ``(N, D)`` (any backbone ``logits`` it holds are replaced).
        head: the IND head (:func:`fit_head`).

    Returns:
        A new FeatureSet sharing every other field with ``fs``.

    Raises:
        InputError: ``fs`` has no ``features``, or their width is not the head's.
    """
    if fs.features is None:
        raise InputError(f"with_head_logits needs the pooled features of '{fs.name}' (FeatureSet.features); "
                         f"extract them with the same backbone as the head's training split")
    if np.shape(fs.features)[-1] != head.weight.shape[1]:
        raise InputError(f"with_head_logits: '{fs.name}' has {np.shape(fs.features)[-1]}-dimensional features, the head "
                         f"reads {head.weight.shape[1]}: use the backbone the head was fitted on")
    return fs.with_(logits=head(fs.features))


def head_accuracy(head: LinearHead, features: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``head`` on labelled features."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) == 0:
        raise ValueError("head_accuracy: no samples")
    pred = head(features).argmax(1)
    return float((pred == labels).mean())


class Classifier(torch.nn.Module):
    """Images -> IND logits: the backbone's differentiable feature module (``backbone.torch_module()``)
    followed by the IND linear head, in eval mode on ``device`` -- what ODIN back-propagates through.

    :meth:`predict` computes the same logits without gradients, through the backbone's own inference
    engine when it has a separate one (EfficientNet-Lite's onnxruntime engine on the CPU: about 2x
    faster than the torch graph; the two agree to ~1e-5 in the features), else through the torch module.
    """

    def __init__(self, backbone: Any, head: LinearHead, device: str = "cpu") -> None:
        super().__init__()
        self.features = backbone.torch_module()
        self.linear = torch.nn.Linear(head.weight.shape[1], head.weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(head.weight, dtype=torch.float32))
            self.linear.bias.copy_(torch.as_tensor(head.bias, dtype=torch.float32))
        self.to(device).eval()
        self._engine = backbone if getattr(backbone, "engine", None) == "onnx" else None
        self._head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """IND logits ``(B,C)`` float64 of preprocessed images ``(B,3,H,W)``, no gradients: on the CPU through the
        backbone's engine when it has one, else through the torch module on ``x``'s device (no host round trip)."""
        if self._engine is not None:
            feats, _ = pooled_logits(self._engine, np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32))
            return torch.from_numpy(self._head(feats, dtype=np.float64))
        return self(x).double()
