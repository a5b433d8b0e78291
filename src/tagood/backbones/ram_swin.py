"""The Swin Transformer image encoder of RAM, with the official checkpoint's module names.

Swin Transformer: Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021. RAM (Zhang et al., "Recognize Anything: A Strong Image Tagging Model",
CVPR-W 2024) uses Swin-L at 384x384 (embed 192, depths 2-2-18-2, heads 6-12-24-48, window 12) and
returns ``(B, 1 + HW, C)``: the average of the final normalised patch tokens prepended to them.

Parameter names follow the official checkpoint (``visual_encoder.`` prefix stripped):
``patch_embed.proj``, ``patch_embed.norm``, ``layers.{i}.blocks.{j}.{norm1,attn.qkv,attn.proj,
attn.relative_position_bias_table,norm2,mlp.fc1,mlp.fc2}``, ``layers.{i}.downsample.{norm,reduction}``,
``norm``. The relative-position index and the shifted-window masks are recomputed here and kept as
non-persistent buffers, so they are neither required from nor written to a checkpoint.

Why not ``transformers.SwinModel``: its layout differs from the official one (q/k/v split, key
names that change across transformers versions) and, unlike the reference Swin, it keeps the
configured window (and bias-table size) in stages smaller than a window, so official tables of
such stages would not even load. This module is checked against ``SwinModel`` (weights mapped)
in ``tests/test_ram.py`` on configurations where the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SwinConfig:
    """Swin hyper-parameters (defaults: RAM's Swin-L/384)."""

    img_size: int = 384
    patch_size: int = 4
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0

    @property
    def num_features(self) -> int:
        return int(self.embed_dim * 2 ** (len(self.depths) - 1))

    @property
    def grid(self) -> int:
        """Side of the final token grid (12 for Swin-L/384)."""
        return self.img_size // self.patch_size // 2 ** (len(self.depths) - 1)


def relative_position_index(window: int) -> torch.Tensor:
    """(w*w, w*w) index into the ((2w-1)^2, heads) bias table for every pair of positions in a window."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, w*w)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, n, n), shifted to >= 0
    return rel[0] * (2 * window - 1) + rel[1]


def windows_of(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B,H,W,C) -> (B*nW, w*w, C), windows in row-major order."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def merge_windows(x: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of :func:`windows_of`: (B*nW, w*w, C) -> (B,H,W,C)."""
    c = x.shape[-1]
    b = x.shape[0] // ((h // w) * (wd // w))
    x = x.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


def shifted_window_mask(h: int, wd: int, w: int, shift: int) -> torch.Tensor:
    """(nW, w*w, w*w) additive mask (0 / -100) keeping attention inside each region of a shifted window."""
    region = torch.zeros(h, wd)
    cuts = ((0, h - w), (h - w, h - shift), (h - shift, h))
    cuts_w = ((0, wd - w), (wd - w, wd - shift), (wd - shift, wd))
    label = 0
    for a, b in cuts:
        for c, d in cuts_w:
            region[a:b, c:d] = label
            label += 1
    r = windows_of(region[None, :, :, None], w).squeeze(-1)  # (nW, w*w)
    diff = r[:, None, :] - r[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias."""

    relative_position_index: torch.Tensor  # a (non-persistent) buffer

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.window = window
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def bias(self) -> torch.Tensor:
        n = self.window * self.window
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.bias().to(q.dtype)  # (heads, n, n)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:  # (B, nW, heads, n, d) against a (nW, heads, n, n) bias + mask
            nw = mask.shape[0]
            shape = (bw // nw, nw, self.heads, n, -1)
            full = bias[None] + mask[:, None].to(q.dtype)
            out = F.scaled_dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape),
                                                 attn_mask=full, scale=self.scale).reshape(bw, self.heads, n, -1)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP block. A window at least as large as the feature
    map becomes the whole map and the shift is dropped (as in the reference Swin)."""

    attn_mask: torch.Tensor | None  # a (non-persistent) buffer; None without a shift

    def __init__(self, dim: int, resolution: int, heads: int, window: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        if resolution <= window:
            window, shift = resolution, 0
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = shifted_window_mask(resolution, resolution, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, L, c = x.shape
        r, w, s = self.resolution, self.window, self.shift
        h = self.norm1(x).view(b, r, r, c)
        if s:
            h = torch.roll(h, shifts=(-s, -s), dims=(1, 2))
        h = merge_windows(self.attn(windows_of(h, w), self.attn_mask), w, r, r)
        if s:
            h = torch.roll(h, shifts=(s, s), dims=(1, 2))
        x = x + h.reshape(b, L, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concatenation (order x00, x10, x01, x11), LayerNorm, linear 4C -> 2C."""

    def __init__(self, dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        r = self.resolution
        x = x.view(b, r, r, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, resolution: int, depth: int, heads: int, window: int, mlp_ratio: float,
                 downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio) for i in range(depth)
        )
        self.downsample = PatchMerging(dim, resolution) if downsample else None

    def forward(self, x: torch.Tensor, norms: list[torch.Tensor] | None = None) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
            if norms is not None:
                norms.append(token_feature_norm(x))
        return self.downsample(x) if self.downsample is not None else x


def token_feature_norm(h: torch.Tensor) -> torch.Tensor:
    """FeatureNorm of a block output given as tokens ``(B, L, C)`` (Yu et al., "Block Selection Method
    for Using Feature Norm in Out-of-Distribution Detection", CVPR 2023): the L2 norm over the L
    spatial positions of each channel of ReLU(h), averaged over the C channels -> (B,). The same
    definition as the CNN version (``EfficientNetLite.feature_norm``) with tokens as positions."""
    return torch.relu(h).norm(dim=1).mean(dim=1)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinEncoder(nn.Module):
    """images (B,3,S,S) -> tokens (B, 1 + g*g, C): mean of the final patch tokens, then the g*g tokens."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.cfg = cfg
        res = cfg.img_size // cfg.patch_size
        if cfg.img_size % cfg.patch_size or res % 2 ** (len(cfg.depths) - 1):
            raise ValueError(f"image size {cfg.img_size} must be divisible by patch {cfg.patch_size} * 2^{len(cfg.depths) - 1}")
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        self.layers = nn.ModuleList()
        for i, (d, h) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True)):
            r = res // 2**i
            self.layers.append(SwinStage(cfg.embed_dim * 2**i, r, d, h, cfg.window_size, cfg.mlp_ratio, i < len(cfg.depths) - 1))
        self.norm = nn.LayerNorm(cfg.num_features)

    @property
    def n_blocks(self) -> int:
        """Number of Swin blocks (one FeatureNorm per block: ``sum(depths)``, 24 for Swin-L)."""
        return int(sum(self.cfg.depths))

    def forward(self, x: torch.Tensor, norms: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``norms``: when a list, each block's :func:`token_feature_norm` (B,) is appended to it, in order."""
        if x.shape[-2:] != (self.cfg.img_size, self.cfg.img_size):
            raise ValueError(f"RAM's Swin expects {self.cfg.img_size}x{self.cfg.img_size} images, got {tuple(x.shape[-2:])}")
        h = self.patch_embed(x)
        for layer in self.layers:
            h = layer(h, norms)
        h = self.norm(h)
        return torch.cat([h.mean(dim=1, keepdim=True), h], dim=1)
