"""The TagOOD projector (paper section 3.4): object token sets -> one feature per image.

Linear in (D_in -> d), a learnable CLS token, a learned position embedding indexed by each
token's *spatial* position (index 0 is the CLS token, token position p uses p + 1), pre-LN
transformer blocks (``depth`` = 2, ``heads`` = 8, MLP ``mlp`` = 2048, GELU), a final LayerNorm; the
CLS output is the feature (d = 512 in the paper); a linear head gives class logits. Padded batches
use key-padding masks, so a sample's feature does not depend on what it is batched with.

On the CPU the blocks run **packed**: every per-token layer (LayerNorms, the q/k/v and output
projections, the MLP) sees only the real tokens and the CLS tokens, and only attention itself is
laid out padded (:func:`packed_block`). Padding is masked out of attention and its outputs are never
read, so the feature is the same function as the padded ``nn.TransformerEncoder`` forward (equal to
float rounding, ``tests/test_tagood.py``) at a fraction of the cost: object tokens keep ~40% of a
batch's padded width, and images without a kept tag use all tokens, so nearly every training batch
pads to the full grid. The parameters are those of the ``nn.TransformerEncoderLayer`` modules (same
state dict); on accelerators, where boolean indexing waits for the host, the padded forward runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class PackedLayout:
    """Where the packed tokens of a batch go for attention: samples of similar length are padded together.

    ``groups``: per group of samples, ``(rows, where, key_mask)`` -- the packed rows of its samples, their
    ``(sample in group, column)`` places in the group's padded ``(n_g, W_g)`` layout and the ``(n_g,1,1,W_g)``
    key mask (True = a real key); ``inverse``: the packed order of the groups' concatenated rows (None with one
    group); ``starts`` (B+1,): where each sample's rows begin in the packed order (its CLS row). Attention cost
    grows with the square of the padded width, and one long sample (an image without a kept tag uses all its
    tokens) would otherwise set the width of the whole batch."""

    groups: tuple[tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor], ...]
    inverse: torch.Tensor | None
    starts: torch.Tensor

    @classmethod
    def of(cls, lengths: torch.Tensor) -> PackedLayout:
        """The layout of samples with ``lengths`` (B,) real tokens each (CLS included), packed one after the other:
        at most two groups, split at the sample length that minimises the summed squared widths (one group unless
        that saves a quarter). In a group, sample tokens take columns 0..n-1 of its row, in packed order."""
        lens = lengths.tolist()
        b, dev = len(lens), lengths.device
        order = sorted(range(b), key=lens.__getitem__)
        full = b * max(lens, default=0) ** 2
        split, best = b, full
        for k in range(1, b):
            cost = k * lens[order[k - 1]] ** 2 + (b - k) * lens[order[-1]] ** 2
            if cost < best:
                split, best = k, cost
        parts = [list(range(b))] if split == b or best > 0.75 * full else [sorted(order[:split]), sorted(order[split:])]
        first = torch.zeros(b + 1, dtype=torch.long, device=dev)
        torch.cumsum(lengths, 0, out=first[1:])
        groups = []
        for members in parts:
            idx = torch.as_tensor(members, dtype=torch.long, device=dev)
            n = lengths[idx]
            width = max((lens[i] for i in members), default=0)
            start = torch.repeat_interleave(first[idx], n)
            row = torch.repeat_interleave(torch.arange(len(members), device=dev), n)
            col = torch.arange(len(row), device=dev) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
            key_mask = torch.arange(width, device=dev)[None, :] < n[:, None]
            groups.append((start + col, (row, col), key_mask[:, None, None, :]))
        if len(groups) == 1:
            return cls(tuple(groups), None, first)
        cat = torch.cat([g[0] for g in groups])
        inverse = torch.empty_like(cat)
        inverse[cat] = torch.arange(len(cat), device=dev)
        return cls(tuple(groups), inverse, first)


def packed_block(layer: nn.TransformerEncoderLayer, h: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """One pre-LN ``nn.TransformerEncoderLayer`` (``norm_first=True``, batch first, GELU) on packed tokens.

    ``h`` (T,d): the real tokens of a batch, laid out for attention by ``layout``. The per-token layers run on
    ``h``; q/k/v are scattered into each group's padded layout for attention and its output is gathered back.
    Dropout as the module applies it (on the attention weights, after the output projection, inside and after
    the MLP) when ``layer.training``."""
    attn = layer.self_attn
    d = h.shape[-1]
    heads = attn.num_heads
    p = attn.dropout if layer.training else 0.0
    qkv = F.linear(layer.norm1(h), attn.in_proj_weight, attn.in_proj_bias)
    outs = []
    for rows, where, key_mask in layout.groups:
        b, length = key_mask.shape[0], key_mask.shape[-1]
        part = qkv if layout.inverse is None else qkv[rows]
        padded = qkv.new_zeros(b, length, 3 * d).index_put(where, part)
        q, k, v = padded.view(b, length, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p)  # (b,heads,length,d/heads)
        outs.append(o.transpose(1, 2).reshape(b, length, d)[where])
    o = outs[0] if layout.inverse is None else torch.cat(outs)[layout.inverse]
    h = h + layer.dropout1(attn.out_proj(o))
    return h + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(h))))))


def runs_packed(device: torch.device) -> bool:
    """Whether :class:`Projector` runs packed by default on ``device``: on the CPU; not on accelerators, where
    boolean indexing waits for the host."""
    return device.type == "cpu"


class Projector(nn.Module):
    """The TagOOD projector (module docstring): an image's token set -> one feature ``(dim,)`` and IND class logits.

    Args:
        in_dim: the tokens' dimension.
        num_classes: the number of IND classes (the logit head).
        num_positions: the number of spatial token positions.
        dim: the feature width; ``depth``, ``heads``, ``mlp``, ``dropout``: the transformer blocks'.
    """

    def __init__(self, in_dim: int, num_classes: int, num_positions: int, dim: int = 512, depth: int = 2, heads: int = 8,
                 mlp: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.config = dict(in_dim=in_dim, num_classes=num_classes, num_positions=num_positions, dim=dim, depth=depth,
                           heads=heads, mlp=mlp, dropout=dropout)
        self.proj = nn.Linear(in_dim, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Embedding(num_positions + 1, dim)
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp, dropout=dropout, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        #: run the blocks packed (see the module docstring); ``None``: where :func:`runs_packed` says
        self.packed: bool | None = None

    def features(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B,L,D_in), positions (B,L) spatial indices, mask (B,L) True = real token -> (B,dim).

        Or already packed: tokens (T,D_in) and positions (T,) of the real tokens in row-major order of ``mask``
        (``tokens[mask]``), which runs the packed forward whatever :attr:`packed` says."""
        if tokens.dim() == 2:
            return self._features_packed(tokens, positions, mask)
        packed = runs_packed(tokens.device) if self.packed is None else self.packed
        if packed:
            return self._features_packed(tokens[mask], positions[mask], mask)
        b = tokens.shape[0]
        x = self.proj(tokens) + self.pos(positions + 1)
        cls = self.cls.expand(b, -1, -1) + self.pos.weight[0]
        x = torch.cat([cls, x], dim=1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=mask.device), ~mask], dim=1)
        x = self.blocks(x, src_key_padding_mask=pad)
        return self.norm(x[:, 0])

    def _features_packed(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (T,D_in) and positions (T,) packed in row-major order of mask (B,L) -> (B,dim)."""
        b = mask.shape[0]
        # every sample is its CLS token followed by its real tokens, so its CLS token is its first packed row
        layout = PackedLayout.of(mask.sum(1) + 1)
        x = self.proj(tokens) + self.pos(positions + 1)
        cls = (self.cls[0] + self.pos.weight[0]).expand(b, -1)
        first = layout.starts[:-1]
        is_cls = torch.zeros(int(layout.starts[-1]), dtype=torch.bool, device=mask.device)
        is_cls[first] = True
        h = x.new_empty(len(is_cls), x.shape[-1])
        h[is_cls] = cls
        h[~is_cls] = x
        for layer in self.blocks.layers:
            h = packed_block(layer, h, layout)
        if self.blocks.norm is not None:
            h = self.blocks.norm(h)
        return self.norm(h[first])

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (B, dim), logits (B, C))`` of a batch, as :meth:`features` takes it."""
        f = self.features(tokens, positions, mask)
        return f, self.head(f)
