"""The RAM / RAM++ tagger as a torch module (image encoder + tag queries + tagging head + fc).

RAM: Zhang et al., "Recognize Anything: A Strong Image Tagging Model", CVPR-W 2024.
RAM++: Huang et al., "Open-Set Image Tagging with Multi-Grained Text Supervision", arXiv 2023.

Only the tagging path is built: ``image_proj(visual_encoder(x))`` gives the image tokens
(B, 1 + g*g, 512) (token 0 = average-pooled token, then the g*g patch grid, g = 12 for Swin-L/384);
the tag queries ``relu(wordvec_proj(label_embed))`` (RAM) cross-attend to those tokens in the
tagging head and ``fc`` gives one logit per tag; tag probabilities are ``sigmoid(logits)``.
RAM++ holds ``D`` description embeddings per tag (``label_embed`` of T*D rows, D = 51) and mixes
them per image: ``w = softmax_D(exp(reweight_scale) * norm(token_0) . label_embed)``, query =
``relu(wordvec_proj(sum_D w * label_embed))``. The text encoder/decoder of the checkpoints
(captioning, Tag2Text) are not part of this module.

Module names equal the official checkpoint's: ``visual_encoder``, ``image_proj``, ``label_embed``,
``wordvec_proj``, ``tagging_head``, ``fc`` (and ``reweight_scale`` for RAM++).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tagood.backbones.ram_head import HeadConfig, TaggingHead
from tagood.backbones.ram_swin import SwinConfig, SwinEncoder


@dataclass(frozen=True)
class RAMConfig:
    """Architecture of a RAM tagger (defaults: the released ``ram_swin_large_14m``)."""

    swin: SwinConfig = field(default_factory=SwinConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    num_tags: int = 4585
    embed_dim: int = 512  # image_proj output = label_embed width = head encoder width
    descriptions_per_tag: int = 1  # 51 for RAM++

    @property
    def variant(self) -> str:
        return "ram_plus" if self.descriptions_per_tag > 1 else "ram"

    @property
    def num_tokens(self) -> int:
        return 1 + self.swin.grid**2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["variant"] = self.variant
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RAMConfig:
        sw = dict(d.get("swin", {}))
        for k in ("depths", "num_heads"):
            if k in sw:
                sw[k] = tuple(int(v) for v in sw[k])
        return cls(swin=SwinConfig(**sw), head=HeadConfig(**d.get("head", {})), num_tags=int(d["num_tags"]),
                   embed_dim=int(d.get("embed_dim", 512)), descriptions_per_tag=int(d.get("descriptions_per_tag", 1)))


class RAMModel(nn.Module):
    """RAM's tagging path (see module docstring). Inputs are preprocessed images (B,3,S,S)."""

    def __init__(self, cfg: RAMConfig) -> None:
        super().__init__()
        if cfg.head.encoder_width != cfg.embed_dim:
            raise ValueError(f"head encoder width {cfg.head.encoder_width} must equal the image token width {cfg.embed_dim}")
        self.cfg = cfg
        self.visual_encoder = SwinEncoder(cfg.swin)
        self.image_proj = nn.Linear(cfg.swin.num_features, cfg.embed_dim)
        self.label_embed = nn.Parameter(torch.zeros(cfg.num_tags * cfg.descriptions_per_tag, cfg.embed_dim))
        self.wordvec_proj = nn.Linear(cfg.embed_dim, cfg.head.hidden_size)
        self.tagging_head = TaggingHead(cfg.head)
        self.fc = nn.Linear(cfg.head.hidden_size, 1)
        if cfg.descriptions_per_tag > 1:
            self.reweight_scale = nn.Parameter(torch.zeros(()))

    def image_tokens(self, images: torch.Tensor, norms: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(B,3,S,S) -> image tokens (B, 1 + g*g, embed_dim) = image_proj(swin(x)); with a list ``norms``,
        the FeatureNorm (B,) of every Swin block's output is appended to it (see ``token_feature_norm``)."""
        return self.image_proj(self.visual_encoder(images, norms))

    def tag_embeddings(self, tokens: torch.Tensor, tag_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Label embeddings (1, T', 512) for RAM, or the per-image description mixture (B, T', 512)
        for RAM++; ``tag_idx`` selects tags: (T',) shared, or (B, k) per image."""
        emb = self.label_embed
        d = self.cfg.descriptions_per_tag
        if d == 1:
            if tag_idx is None:
                return emb[None]
            return emb[tag_idx] if tag_idx.ndim == 2 else emb[tag_idx][None]
        desc = emb.view(self.cfg.num_tags, d, -1)  # (T, D, 512)
        if tag_idx is not None:
            desc = desc[tag_idx]  # (T', D, 512) or (B, k, D, 512)
        pooled = F.normalize(tokens[:, 0], dim=-1)  # (B, 512)
        scale = self.reweight_scale.exp()
        if desc.ndim == 3:
            w = torch.softmax(scale * torch.einsum("be,tde->btd", pooled, desc), dim=-1)
            return torch.einsum("btd,tde->bte", w, desc)
        w = torch.softmax(scale * torch.einsum("be,bkde->bkd", pooled, desc), dim=-1)
        return torch.einsum("bkd,bkde->bke", w, desc)

    def queries(self, tokens: torch.Tensor, tag_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Tag queries relu(wordvec_proj(label embeddings)): (1 or B, T', hidden)."""
        return F.relu(self.wordvec_proj(self.tag_embeddings(tokens, tag_idx)))

    def tag_logits(self, tokens: torch.Tensor, probs_of: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Image tokens (B,N,512) -> tag logits (B,T) and the attention probabilities
        (B, heads, T, N) of the head layers in ``probs_of``."""
        states, probs = self.tagging_head(self.queries(tokens), tokens, probs_of)
        return self.fc(states).squeeze(-1), probs

    def tag_attention(self, tokens: torch.Tensor, tag_ids: torch.Tensor, layer: int) -> torch.Tensor:
        """Cross-attention (B, k, N) of tags ``tag_ids`` (B, k) over the image tokens (B, N, 512) in
        head layer ``layer``, summed over heads. Exact for any tag subset: the head has no
        self-attention, so a tag's states never depend on the other tags."""
        q = self.queries(tokens, tag_ids)  # (B, k, hidden)
        return self.tagging_head.layer_probs(q, tokens, layer).sum(dim=1)
