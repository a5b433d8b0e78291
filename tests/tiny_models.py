"""Tiny randomly initialised RAM and CLIP models saved in the official on-disk layouts.

RAM: a ``.pth`` file ``{"model": state_dict}`` with the tagger's keys under the official names,
the Swin buffers the official checkpoint carries (``relative_position_index``, ``attn_mask``),
and modules the tagger does not use (``tag_encoder.*``, ``text_decoder.*``), plus a tag list and
a threshold file. CLIP: a Hugging Face ``CLIPModel`` directory with a tiny byte-level BPE tokenizer
(characters only, no merges) and a ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tagood.backbones.ram_head import HeadConfig
from tagood.backbones.ram_model import RAMConfig, RAMModel
from tagood.backbones.ram_swin import (
    SwinConfig,
    relative_position_index,
    shifted_window_mask,
)

TINY_TAGS = [
    "dog", "cat", "car", "tree", "house", "person", "bird", "boat", "flower", "chair",
    "table", "cup", "book", "horse", "sheep", "airplane", "bicycle", "bus", "truck", "clock",
]


def tiny_ram_config(num_tags: int = len(TINY_TAGS), descriptions: int = 1) -> RAMConfig:
    """Swin embed 8, depths 2-2-2-2, window 2 at 64 px (final grid 2x2 -> 5 tokens); head hidden 32, 4 heads."""
    return RAMConfig(
        swin=SwinConfig(img_size=64, patch_size=4, embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=2),
        head=HeadConfig(hidden_size=32, num_heads=4, num_layers=2, intermediate_size=64, encoder_width=16),
        num_tags=num_tags, embed_dim=16, descriptions_per_tag=descriptions,
    )


def random_ram(cfg: RAMConfig, seed: int = 0) -> RAMModel:
    """A RAMModel with every parameter drawn at random (LayerNorms near 1, so activations stay sane)."""
    g = torch.Generator().manual_seed(seed)
    m = RAMModel(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        if cfg.descriptions_per_tag > 1:
            m.reweight_scale.fill_(1.5)
    return m.eval()


def official_state_dict(model: RAMModel) -> dict[str, torch.Tensor]:
    """The model's weights as the official RAM checkpoint lays them out (extra buffers and modules included)."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = model.cfg
    res = cfg.swin.img_size // cfg.swin.patch_size
    for i, depth in enumerate(cfg.swin.depths):
        r = res // 2**i
        w = min(cfg.swin.window_size, r)
        for j in range(depth):
            sd[f"visual_encoder.layers.{i}.blocks.{j}.attn.relative_position_index"] = relative_position_index(w)
            if j % 2 == 1 and r > cfg.swin.window_size:
                sd[f"visual_encoder.layers.{i}.blocks.{j}.attn_mask"] = shifted_window_mask(r, r, w, w // 2)
    g = torch.Generator().manual_seed(1)
    h = cfg.head.hidden_size
    for lyr in range(2):  # Tag2Text-style modules of the full checkpoint the tagger never runs
        sd[f"tag_encoder.encoder.layer.{lyr}.attention.self.query.weight"] = torch.randn(h, h, generator=g)
        sd[f"text_decoder.bert.encoder.layer.{lyr}.crossattention.self.key.weight"] = torch.randn(h, h, generator=g)
    sd["text_decoder.cls.predictions.bias"] = torch.randn(50, generator=g)
    sd["tag_encoder.embeddings.word_embeddings.weight"] = torch.randn(50, h, generator=g)
    return sd


@dataclass
class TinyRAMFiles:
    checkpoint: Path
    tag_list: Path
    thresholds: Path
    model: RAMModel


def write_tiny_ram(tmp: Path, descriptions: int = 1, seed: int = 0, bare: bool = False) -> TinyRAMFiles:
    """Write a tiny RAM (or RAM++ with ``descriptions`` > 1) checkpoint + tag list + thresholds under ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tiny_ram_config(descriptions=descriptions)
    model = random_ram(cfg, seed)
    sd = official_state_dict(model)
    ckpt = tmp / ("ram_plus_tiny.pth" if descriptions > 1 else "ram_tiny.pth")
    torch.save(sd if bare else {"model": sd, "epoch": 3}, ckpt)
    tags = tmp / "ram_tag_list.txt"
    tags.write_text("\n".join(TINY_TAGS), encoding="utf-8")  # no trailing newline, like the official file
    thr = tmp / "ram_tag_list_threshold.txt"
    thr.write_text("\n".join(f"{0.6 + 0.01 * i:.2f}" for i in range(len(TINY_TAGS))) + "\n", encoding="utf-8")
    return TinyRAMFiles(ckpt, tags, thr, model)


# -- CLIP ---------------------------------------------------------------------------------------
_CHARS = list("abcdefghijklmnopqrstuvwxyz.,'-")


def write_tiny_clip(path: Path, seed: int = 0, image_size: int = 32, patch: int = 8, preprocessor: bool = True) -> Path:
    """A tiny Hugging Face CLIP directory (random weights, character-level tokenizer)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    path.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for c in _CHARS:
        vocab[c] = len(vocab)
    for c in _CHARS:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    tok.save_pretrained(str(path))
    eot = vocab["<|endoftext|>"]
    cfg = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 48, "eos_token_id": eot,
                     "bos_token_id": vocab["<|startoftext|>"], "pad_token_id": eot},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "image_size": image_size, "patch_size": patch},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)  # log(100), as the released models
    model.save_pretrained(str(path))
    if preprocessor:
        (path / "preprocessor_config.json").write_text(json.dumps({
            "crop_size": {"height": image_size, "width": image_size}, "do_center_crop": True, "do_normalize": True,
            "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "size": {"shortest_edge": image_size},
        }), encoding="utf-8")
    return path
