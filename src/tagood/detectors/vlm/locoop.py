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
augmentation). Score: MCM or GL-MCM (default) on the learned prompts, negated: **higher = more OOD**
(:func:`tagood.detectors.vlm.mcm.score`, :func:`tagood.detectors.vlm.glmcm.score` with ``tau = 1``).

State: the learned class-prompt embeddings (``text``), saved with the detector; the dual encoder is only needed to
train them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from tagood.backbones.prompts import clean_name
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.validation import NonNegFloat, NonNegInt, PosFloat, PosInt
from tagood.detectors.registry import register
from tagood.detectors.vlm import glmcm, mcm
from tagood.detectors.vlm.base import FewShotDetector, FewShotOptions, few_shot_indices
from tagood.errors import ConfigError
from tagood.runtime.progress import progress_bar

log = logging.getLogger(__name__)

PAPER = "Miyai, Yu, Irie & Aizawa, LoCoOp: Few-Shot Out-of-Distribution Detection via Prompt Learning, NeurIPS 2023"


class ResidualPrompt(nn.Module):
    """Class-agnostic residual on fixed class text embeddings, zero-initialised (identity at start)."""

    base: torch.Tensor

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
class LoCoOp(FewShotDetector):
    """LoCoOp (Miyai et al., NeurIPS 2023): GL-MCM (or MCM) on prompts learned from few-shot IND images, higher =
    more OOD. Needs ``fit`` with ``image_embeds``, ``patch_embeds`` and ``labels`` of the IND training images."""

    class Options(FewShotOptions):
        n_ctx: PosInt = Field(16, description="learnable context vectors before each class name (the paper: 16)")
        lam: NonNegFloat = Field(0.25, description="weight of the entropy maximisation on OOD-like regions (the paper: "
                                                   "0.25)")
        top_k: PosInt | None = Field(None, description="a patch is OOD-like when its label is not among its top_k "
                                                       "classes (none = 20% of the classes, as the paper's 200 of 1000)")
        epochs: NonNegInt = Field(20, description="training epochs (0 = the initial context, untrained)")
        lr: PosFloat = Field(2e-3, description="SGD learning rate (momentum 0.9)")
        batch_size: PosInt = Field(32, description="images per training step")
        score: Literal["glmcm", "mcm"] = Field("glmcm", description="the score on the learned prompts: glmcm (global + "
                                                                    "local, needs patch_embeds) or mcm")
        context: Literal["auto", "tokens", "residual"] = Field(
            "auto", description="tokens: context vectors in the text encoder's input space (needs encode_with_context); "
                                "residual: a zero-initialised residual on the text embeddings; auto: tokens when possible")

    options: Options
    paper: ClassVar[str] = PAPER
    requires: ClassVar[frozenset[str]] = frozenset({"image_embeds", "patch_embeds"})
    fit_requires: ClassVar[frozenset[str] | None] = frozenset({"image_embeds", "patch_embeds", "labels"})

    def _clear(self) -> None:
        super()._clear()
        #: the context parameterisation used by the last fit: ``tokens`` or ``residual``
        self.context_used = ""
        #: mean training loss of each epoch
        self.history: list[float] = []

    def _fit(self, train: FeatureSet, context: Context) -> None:
        super()._fit(train, context)
        enc = self._encoder(context)
        o = self.options
        assert train.labels is not None and train.patch_embeds is not None
        kind = o.context
        if kind == "auto":
            kind = "tokens" if hasattr(enc, "encode_with_context") else "residual"
        if kind == "tokens" and not hasattr(enc, "encode_with_context"):
            raise ConfigError(f"locoop context='tokens' needs a dual encoder with encode_with_context; {type(enc).__name__} "
                              "has none: use context=residual (or auto)")
        self.context_used = kind
        names = [clean_name(n) for n in self.class_names]
        torch.manual_seed(o.seed)
        prompt: nn.Module = ContextPrompt(enc, names, o.n_ctx, seed=o.seed) if kind == "tokens" else \
            ResidualPrompt(torch.as_tensor(self.text, dtype=torch.float32))
        idx = few_shot_indices(train.labels, o.shots, o.seed)
        x = torch.as_tensor(np.asarray(train.image_embeds, dtype=np.float32)[idx])
        x = F.normalize(x, dim=-1)
        tok, _, mask = train.patch_embeds.select(idx).pad()
        p = F.normalize(torch.as_tensor(tok, dtype=torch.float32), dim=-1)
        pm = torch.as_tensor(mask)
        y = torch.as_tensor(np.asarray(train.labels)[idx], dtype=torch.int64)
        c = len(names)
        top_k = int(o.top_k) if o.top_k is not None else max(1, int(round(0.2 * c)))
        scale = self.logit_scale
        opt = torch.optim.SGD([q for q in prompt.parameters() if q.requires_grad], lr=o.lr, momentum=0.9)
        g = torch.Generator().manual_seed(o.seed)
        self.history = []
        with progress_bar("LoCoOp training", o.epochs) as advance:
            for _ in range(o.epochs):
                perm = torch.randperm(len(x), generator=g)
                total = 0.0
                for a in range(0, len(x), o.batch_size):
                    b = perm[a : a + o.batch_size]
                    t = prompt()
                    l_ce = F.cross_entropy(scale * x[b] @ t.T, y[b])
                    pl = scale * p[b] @ t.T  # (B,P,C)
                    sel = ood_region_mask(pl, y[b], top_k) & pm[b]
                    if sel.any():
                        q = torch.softmax(pl[sel], dim=-1)
                        ent = -(q * torch.log(q.clamp_min(1e-12))).sum(-1).mean()
                    else:
                        ent = pl.new_zeros(())
                    loss = l_ce - o.lam * ent
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(b) / len(x)
                self.history.append(total)
                advance(1)
        with torch.no_grad():
            self.text = prompt().detach().cpu().numpy().astype(np.float32)

    def _score(self, data: FeatureSet) -> np.ndarray:
        text = self._prompt_rows()
        assert data.image_embeds is not None
        if self.options.score == "glmcm":
            assert data.patch_embeds is not None
            return glmcm.score(data.image_embeds, data.patch_embeds, text)
        return mcm.score(data.image_embeds, text)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The learned prompt embeddings (``text``) and :class:`VLMDetector`'s metadata, with the context kind used
        and the training losses."""
        arrays, meta = super()._state()
        meta.update(context_used=self.context_used, history=list(self.history))
        return arrays, meta

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        super()._set_state(arrays, meta)
        self.context_used = str(meta["context_used"])
        self.history = [float(h) for h in meta["history"]]
