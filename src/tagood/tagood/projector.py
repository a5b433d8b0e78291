"""The TagOOD projector (paper section 3.4): object token sets -> one feature per image.

Linear in (D_in -> d), a learnable CLS token, a learned position embedding indexed by each
token's *spatial* position (index 0 is the CLS token, token position p uses p + 1), pre-LN
transformer blocks (``depth`` = 2, ``heads`` = 8, MLP ``mlp`` = 2048, GELU), a final LayerNorm; the
CLS output is the feature (d = 512 in the paper); a linear head gives class logits. Padded batches
use key-padding masks, so a sample's feature does not depend on what it is batched with.
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
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

    def features(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (B,L,D_in), positions (B,L) spatial indices, mask (B,L) True = real token -> (B,dim)."""
        b = tokens.shape[0]
        if tokens.device.type == "cpu":
            # project only the real tokens: padding is masked out of attention and its outputs are never read, so
            # the CLS feature is the same; the widest matmul of a step shrinks to the real tokens (~12% of a demo
            # step). Not on accelerators: boolean indexing waits for the host there.
            real = self.proj(tokens[mask])
            x = real.new_zeros(b, tokens.shape[1], real.shape[-1]).index_put((mask,), real)
        else:
            x = self.proj(tokens)
        x = x + self.pos(positions + 1)
        cls = self.cls.expand(b, -1, -1) + self.pos.weight[0]
        x = torch.cat([cls, x], dim=1)
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=mask.device), ~mask], dim=1)
        x = self.blocks(x, src_key_padding_mask=pad)
        return self.norm(x[:, 0])

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(tokens, positions, mask)
        return f, self.head(f)
