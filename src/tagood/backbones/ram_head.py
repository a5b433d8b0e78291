"""RAM's tagging head: a Query2Label-style stack of BERT layers with cross-attention and FFN only.

RAM (Zhang et al., "Recognize Anything: A Strong Image Tagging Model", CVPR-W 2024) deletes the
self-attention and the embeddings of its 2-layer BERT tagging decoder (following Query2Label,
Liu et al., arXiv 2021): each tag query attends to the image tokens and is refined by a
feed-forward block, independently of the other tags. So the head's output (and its attention) for
any subset of tags equals the corresponding rows of the full computation, which is what lets the
attention of arbitrary tags be recomputed later from cached image tokens.

Per layer (post-LN, as BERT): ``a = LN(q + W_o . softmax(Q K^T / sqrt(d)) V)``,
``out = LN(a + W_2 . gelu(W_1 a))``. Parameter names follow the official checkpoint
(``tagging_head.`` prefix stripped): ``encoder.layer.{i}.crossattention.self.{query,key,value}``,
``encoder.layer.{i}.crossattention.output.{dense,LayerNorm}``, ``encoder.layer.{i}.intermediate.dense``,
``encoder.layer.{i}.output.{dense,LayerNorm}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    """Tagging-head hyper-parameters (defaults: RAM's q2l_config with encoder width 512)."""

    hidden_size: int = 768
    num_heads: int = 4
    num_layers: int = 2
    intermediate_size: int = 3072
    encoder_width: int = 512
    layer_norm_eps: float = 1e-12


class _Proj(nn.Module):
    """``self.{query,key,value}`` of a BERT cross-attention."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.encoder_width, cfg.hidden_size)
        self.value = nn.Linear(cfg.encoder_width, cfg.hidden_size)


class _DenseLN(nn.Module):
    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _CrossAttention(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.self = _Proj(cfg)
        self.output = _DenseLN(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)


class CrossLayer(nn.Module):
    """One tagging-head layer: cross-attention (tags -> image tokens) + FFN, post-LN."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.heads = cfg.num_heads
        self.crossattention = _CrossAttention(cfg)
        self.intermediate = _Dense(cfg.hidden_size, cfg.intermediate_size)
        self.output = _DenseLN(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        *lead, n, d = x.shape
        return x.view(*lead, n, self.heads, d // self.heads).transpose(-3, -2)  # (..., heads, n, dh)

    def attention_probs(self, q_in: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Softmax attention (B, heads, T, N) of tag states ``q_in`` (B or 1, T, H) over image tokens (B, N, We)."""
        p = self.crossattention.self
        q = self._split(p.query(q_in))
        k = self._split(p.key(image))
        return torch.softmax(q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5), dim=-1)

    def forward(self, x: torch.Tensor, image: torch.Tensor, need_probs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tag states (B or 1, T, H), image tokens (B, N, We) -> new states (B, T, H) and, when asked,
        the attention probabilities (B, heads, T, N)."""
        p = self.crossattention.self
        v = self._split(p.value(image))  # (B, heads, N, dh)
        if need_probs:
            probs = self.attention_probs(x, image)
            ctx = probs @ v
        else:
            probs = None
            q = self._split(p.query(x))
            k = self._split(p.key(image))
            if q.shape[0] != k.shape[0]:
                q = q.expand(k.shape[0], *q.shape[1:])
            ctx = F.scaled_dot_product_attention(q, k, v)
        b, _, t, _ = ctx.shape
        ctx = ctx.transpose(1, 2).reshape(b, t, -1)
        o = self.crossattention.output
        a = o.LayerNorm(o.dense(ctx) + x)
        h = F.gelu(self.intermediate.dense(a))
        return self.output.LayerNorm(self.output.dense(h) + a), probs


class _Encoder(nn.Module):
    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(CrossLayer(cfg) for _ in range(cfg.num_layers))


class TaggingHead(nn.Module):
    """Tag queries (B or 1, T, H) + image tokens (B, N, We) -> final tag states (B, T, H), and the
    attention probabilities (B, heads, T, N) of the layers listed in ``probs_of``."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = _Encoder(cfg)

    def forward(self, queries: torch.Tensor, image: torch.Tensor,
                probs_of: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        x = queries
        probs: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.encoder.layer):
            x, p = layer(x, image, need_probs=i in probs_of)
            if p is not None:
                probs[i] = p
        return x, probs

    def layer_probs(self, queries: torch.Tensor, image: torch.Tensor, layer: int) -> torch.Tensor:
        """Attention probabilities (B, heads, T, N) of ``layer`` only; later layers are not run."""
        x = queries
        for i, lyr in enumerate(self.encoder.layer):
            if i == layer:
                return cast(CrossLayer, lyr).attention_probs(x, image)
            x, _ = lyr(x, image)
        raise IndexError(f"the tagging head has {len(self.encoder.layer)} layers; layer {layer} does not exist")
