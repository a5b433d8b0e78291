"""LoCoOp: Local regularised Context Optimization (Miyai, Yu, Irie, Aizawa, "LoCoOp: Few-Shot
Out-of-Distribution Detection via Prompt Learning", NeurIPS 2023).

CoOp prompts (Zhou et al., IJCV 2022): ``M = 16`` shared learnable context vectors before each class
name. Loss on few-shot IND images: cross-entropy of the global image embedding against the label,
plus ``lam = 0.25`` x (negative entropy) of the class posteriors of *OOD-like local regions*: patches
whose ground-truth class is not among their top-``K`` predicted classes (paper: K = 200 of the 1000
ImageNet classes, i.e. 20%; for C classes we use ``K = max(1, round(0.2 C))``, so with 6 classes
K = 1). Entropy maximisation pushes those regions away from every IND prompt.

Context parameterisation: when the dual encoder exposes ``encode_with_context(ctx, names)`` (the
offline MiniLM encoder does), the context is learned as **input word embeddings** prepended to the
class-name tokens, as in CoOp. Otherwise (e.g. CLIP from transformers, whose text tower does not take
input embeddings through our wrapper) it is learned as a **zero-initialised residual in the
text-embedding space**: ``t_c' = normalise(t_c + A t_c + r)`` with ``A (E,E)``, ``r (E,)`` shared by all classes.

Training uses the cached ``image_embeds`` / ``patch_embeds`` of the few-shot images (no crop
augmentation). Score: MCM or GL-MCM (default) on the learned prompts, negated: **higher = more OOD**.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagood.backbones.prompts import clean_name
from tagood.detectors.registry import register
from tagood.runtime.progress import progress_bar
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context
from tagood.detectors.vlm.base import VLMDetector, few_shot_indices, mcm_confidence
from tagood.detectors.vlm.glmcm import local_confidence

log = logging.getLogger(__name__)


class ResidualPrompt(nn.Module):
    """Class-agnostic residual on fixed class text embeddings, zero-initialised (identity at start)."""

    def __init__(self, base: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("base", base)
        e = base.shape[1]
        self.A = nn.Parameter(torch.zeros(e, e))
        self.r = nn.Parameter(torch.zeros(e))

    def forward(self) -> torch.Tensor:
        return F.normalize(self.base + self.base @ self.A + self.r, dim=-1)


class ContextPrompt(nn.Module):
    """CoOp context vectors in the text encoder's input-embedding space (``encode_with_context``)."""

    def __init__(self, encoder: Any, names: list[str], n_ctx: int, init_std: float = 0.02, seed: int = 0) -> None:
        super().__init__()
        self.encoder, self.names = encoder, names
        g = torch.Generator().manual_seed(seed)
        self.ctx = nn.Parameter(torch.randn(n_ctx, int(encoder.token_dim), generator=g) * init_std)

    def forward(self) -> torch.Tensor:
        return self.encoder.encode_with_context(self.ctx, self.names)


def ood_region_mask(patch_logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> torch.Tensor:
    """(B,P) True where the label is NOT among the patch's top-``top_k`` classes (LoCoOp's OOD regions)."""
    top = patch_logits.topk(top_k, dim=-1).indices  # (B,P,K)
    return ~(top == labels[:, None, None]).any(-1)


@register("locoop")
class LoCoOp(VLMDetector):
    """LoCoOp (Miyai et al., NeurIPS 2023). Higher score = more OOD.

    Hyperparameters: ``n_ctx=16``, ``lam=0.25``, ``top_k`` (None = 20% of the classes), ``shots=16``,
    ``epochs``, ``lr``, ``batch_size``, ``score`` (``"glmcm"`` or ``"mcm"``), ``context``
    (``"auto"``, ``"tokens"`` or ``"residual"``).
    """

    requires = frozenset({"image_embeds", "patch_embeds"})
    fit_requires = frozenset({"image_embeds", "patch_embeds", "labels"})

    def __init__(self, n_ctx: int = 16, lam: float = 0.25, top_k: int | None = None, shots: int | None = 16, epochs: int = 20,
                 lr: float = 2e-3, batch_size: int = 32, score: str = "glmcm", context: str = "auto", seed: int = 0,
                 **hparams: Any) -> None:
        super().__init__(**hparams)
        if score not in ("glmcm", "mcm"):
            raise ValueError("locoop score must be 'glmcm' or 'mcm'")
        if context not in ("auto", "tokens", "residual"):
            raise ValueError("locoop context must be 'auto', 'tokens' or 'residual'")
        self.hparams.update(n_ctx=n_ctx, lam=lam, top_k=top_k, shots=shots, epochs=epochs, lr=lr, batch_size=batch_size,
                            score=score, context=context, seed=seed)
        self.n_ctx, self.lam, self.top_k, self.shots = int(n_ctx), float(lam), top_k, shots
        self.epochs, self.lr, self.batch_size, self.score_kind = int(epochs), float(lr), int(batch_size), score
        self.context_kind, self.seed = context, int(seed)
        self.context_used = ""
        self.history: list[float] = []

    def _fit(self, train: FeatureSet, context: Context) -> None:
        super()._fit(train, context)
        enc = self._encoder(context)
        if train.labels is None:
            raise ValueError("locoop.fit needs the IND training labels (train.labels)")
        kind = self.context_kind
        if kind == "auto":
            kind = "tokens" if hasattr(enc, "encode_with_context") else "residual"
        if kind == "tokens" and not hasattr(enc, "encode_with_context"):
            raise ValueError(f"locoop context='tokens' needs a dual encoder with encode_with_context; {type(enc).__name__} has none")
        self.context_used = kind
        names = [clean_name(n) for n in self.class_names]
        torch.manual_seed(self.seed)
        prompt: nn.Module = ContextPrompt(enc, names, self.n_ctx, seed=self.seed) if kind == "tokens" else \
            ResidualPrompt(torch.as_tensor(self.text, dtype=torch.float32))
        idx = few_shot_indices(train.labels, self.shots, self.seed)
        x = torch.as_tensor(np.asarray(train.image_embeds, dtype=np.float32)[idx])
        x = F.normalize(x, dim=-1)
        tok, _, mask = train.patch_embeds.select(idx).pad()
        p = F.normalize(torch.as_tensor(tok, dtype=torch.float32), dim=-1)
        pm = torch.as_tensor(mask)
        y = torch.as_tensor(np.asarray(train.labels)[idx], dtype=torch.int64)
        c = len(names)
        top_k = int(self.top_k) if self.top_k is not None else max(1, int(round(0.2 * c)))
        scale = self.logit_scale
        opt = torch.optim.SGD([q for q in prompt.parameters() if q.requires_grad], lr=self.lr, momentum=0.9)
        g = torch.Generator().manual_seed(self.seed)
        self.history = []
        with progress_bar("LoCoOp training", self.epochs) as advance:
            for _ in range(self.epochs):
                perm = torch.randperm(len(x), generator=g)
                total = 0.0
                for a in range(0, len(x), self.batch_size):
                    b = perm[a : a + self.batch_size]
                    t = prompt()
                    l_ce = F.cross_entropy(scale * x[b] @ t.T, y[b])
                    pl = scale * p[b] @ t.T  # (B,P,C)
                    sel = ood_region_mask(pl, y[b], top_k) & pm[b]
                    if sel.any():
                        q = torch.softmax(pl[sel], dim=-1)
                        ent = -(q * torch.log(q.clamp_min(1e-12))).sum(-1).mean()
                    else:
                        ent = pl.new_zeros(())
                    loss = l_ce - self.lam * ent
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(b) / len(x)
                self.history.append(total)
                advance(1)
        with torch.no_grad():
            self.text = prompt().detach().cpu().numpy().astype(np.float32)

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert self.text is not None
        conf = mcm_confidence(data.image_embeds, self.text)
        if self.score_kind == "glmcm":
            conf = conf + local_confidence(data.patch_embeds, self.text)
        return -conf
