"""RAM (Recognize Anything Model) as a tagger backbone for TagOOD (implements :class:`tagood.core.types.Backbone`).

RAM: Zhang et al., "Recognize Anything: A Strong Image Tagging Model", CVPR-W 2024; RAM++:
Huang et al., "Open-Set Image Tagging with Multi-Grained Text Supervision", arXiv 2023.
TagOOD: Li et al., "TagOOD: A Novel Approach to Out-of-Distribution Detection via
Vision-Language Representations and Class Center Learning", ACM MM 2024.

One forward gives, per image (float32 numpy):

* ``tokens (B,145,512)``: ``image_proj(swin(x))``, the tokens RAM's tagging head attends to
  (position 0 = the average-pooled token, then the 12x12 patch grid, row-major);
* ``features (B,512)``: the pooled token (position 0);
* ``tag_probs (B,T)``: ``sigmoid(fc(head(queries, tokens)))`` over RAM's T = 4585 tags;
* ``tag_ids (B,k)``: the k most probable tags (optionally among ``candidate_tags`` only), and
  ``tag_attention (B,k,145)``: their raw cross-attention over the tokens in head layer
  ``attention_layer``, summed over the 4 heads (each head's softmax row sums to 1, so a row sums
  to 4); TagOOD min-max normalises it per tag;
* ``block_norms (B, n_blocks)``: FeatureNorm (Yu et al., CVPR 2023) of every Swin block's output
  (24 for Swin-L; the last block of each stage is that stage's output), for the ``featurenorm``
  detector: per channel the L2 norm over the tokens of ReLU(output), averaged over channels;
* ``extra["cross_attention"] (B,L,heads,T,145)``: every layer's full attention, only when the
  tagger is built with ``cross_attention=True`` (about 10.6 MB per image and layer).

:meth:`RAMTagger.torch_module` is the differentiable path images -> ``features`` (the Swin encoder and
``image_proj``, sharing this tagger's weights) that ODIN back-propagates through, with the IND head
on top; it declares ``pixel_std`` (ImageNet's per-channel std) for ODIN's step size.

``attention_layer`` defaults to **0, the first layer**: the public TagOOD code takes the maps
from the first cross-attention layer (the paper's text says the last), so layer 0 is the setting
that produced the published numbers; there the queries are the tag embeddings alone, so a tag's
map depends only on the tag and the image. ``attention_layer=1`` gives the paper's description.
:meth:`RAMTagger.attend` recomputes the maps of any tags from cached tokens (exact, since the
head has no self-attention), so TagOOD can decompose with a vocabulary chosen after extraction.

Preprocessing (``resize``): ``"square"`` (default) is RAM's own transform, the image resized to
384x384 (bilinear, aspect ratio not kept) and normalised with ImageNet mean/std; it keeps the
whole image, so objects near the border stay visible to the tagger. ``"crop"`` reproduces the
public TagOOD code: resize to 392x392, centre crop 384.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tagood.backbones.ram_convert import (
    CONFIG_FILE,
    DEFAULT_THRESHOLD,
    TAGS_FILE,
    RAMCheckpointError,
    convert_ram,
    infer_config,
    load_into,
    read_converted,
    read_state_dict,
    read_tag_list,
    read_thresholds,
    tagger_state_dict,
)
from tagood.backbones.ram_model import RAMConfig, RAMModel
from tagood.backbones.weights_hash import state_hash
from tagood.core.types import ModelOutput
from tagood.runtime.progress import progress_bar

log = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

__all__ = ["RAMCheckpointError", "RAMConfig", "RAMModel", "RAMTagger", "convert_ram", "load_ram", "ram_preprocess"]


def ram_preprocess(image: Image.Image, size: int = 384, resize: str = "square") -> np.ndarray:
    """RGB PIL image -> float32 (3,size,size), ImageNet mean/std. ``resize="square"``: RAM's
    ``Resize((size,size))``; ``"crop"``: resize to size*392/384 square, then centre crop ``size``."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if resize == "square":
        img = image.resize((size, size), Image.Resampling.BILINEAR)
    elif resize == "crop":
        big = round(size * 392 / 384)
        off = (big - size) // 2
        img = image.resize((big, big), Image.Resampling.BILINEAR).crop((off, off, off + size, off + size))
    else:
        raise ValueError(f"resize must be 'square' or 'crop', got {resize!r}")
    a = np.asarray(img, dtype=np.float32) / 255.0
    return ((a - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1).copy()


def _top_k(probs: np.ndarray, k: int, candidates: np.ndarray | None) -> np.ndarray:
    """(B,k) indices of the most probable tags (among ``candidates`` when given), descending."""
    p = probs if candidates is None else probs[:, candidates]
    k = min(int(k), p.shape[1])
    part = np.argpartition(-p, k - 1, axis=1)[:, :k] if k < p.shape[1] else np.tile(np.arange(k), (len(p), 1))
    order = np.argsort(-np.take_along_axis(p, part, axis=1), axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    return (ids if candidates is None else candidates[ids]).astype(np.int64)


class RAMTagger:
    """RAM / RAM++ tagger backbone (see module docstring). Build it with :func:`load_ram`."""

    def __init__(self, model: RAMModel, tag_names: Sequence[str], thresholds: np.ndarray | None = None, device: str = "cpu",
                 batch_size: int = 8, top_k_tags: int = 10, attention_layer: int = 0, candidate_tags: Sequence[int] | None = None,
                 resize: str = "square", cross_attention: bool = False, weights_hash: str = "",
                 dtype: torch.dtype = torch.float32) -> None:
        cfg = model.cfg
        if len(tag_names) != cfg.num_tags:
            raise ValueError(f"{len(tag_names)} tag names for a model with {cfg.num_tags} tags")
        if not 0 <= attention_layer < cfg.head.num_layers:
            raise ValueError(f"attention_layer must be in 0..{cfg.head.num_layers - 1}, got {attention_layer}")
        if resize not in ("square", "crop"):
            raise ValueError(f"resize must be 'square' or 'crop', got {resize!r}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.eval().to(device=self.device, dtype=dtype)
        self.cfg = cfg
        self.tag_names = list(tag_names)
        if thresholds is None:
            log.info("no per-tag threshold file: using RAM's default threshold %.2f for every tag", DEFAULT_THRESHOLD)
            thresholds = np.full(cfg.num_tags, DEFAULT_THRESHOLD, dtype=np.float32)
        self.tag_thresholds = np.asarray(thresholds, dtype=np.float32)
        if self.tag_thresholds.shape != (cfg.num_tags,):
            raise ValueError(f"thresholds must have shape ({cfg.num_tags},), got {self.tag_thresholds.shape}")
        self.batch_size = int(batch_size)
        self.top_k_tags = int(top_k_tags)
        self.attention_layer = int(attention_layer)
        self.candidate_tags = None if candidate_tags is None else np.unique(np.asarray(candidate_tags, dtype=np.int64))
        self.resize = resize
        self.cross_attention = bool(cross_attention)
        self.weights_hash = weights_hash
        sw = cfg.swin
        cand = "" if self.candidate_tags is None else f"-cand{state_hash({'c': torch.as_tensor(self.candidate_tags)})[:8]}"
        self.id = (f"{cfg.variant}-swin{sw.embed_dim}-{'x'.join(map(str, sw.depths))}-{sw.img_size}-{cfg.num_tags}tags"
                   f"-attnL{self.attention_layer}-top{self.top_k_tags}{cand}")
        self.transform_id = f"rgb-{'square' if resize == 'square' else 'square392crop'}{sw.img_size}-bilinear-imagenet-meanstd"
        outs = ["features", "tokens", "tag_probs", "tag_ids", "tag_attention", "block_norms"]
        if self.cross_attention:
            outs.append("cross_attention")
        self.outputs: tuple[str, ...] = tuple(outs)

    # -- Backbone protocol ---------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.cfg.swin.img_size

    @property
    def num_tokens(self) -> int:
        return self.cfg.num_tokens

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 (3,S,S) (see module docstring)."""
        return ram_preprocess(image, self.image_size, self.resize)

    def forward(self, batch: np.ndarray) -> ModelOutput:
        """Preprocessed batch (B,3,S,S) -> ModelOutput of float32 numpy arrays (see module docstring)."""
        batch = np.asarray(batch, dtype=np.float32)
        s = self.image_size
        if batch.ndim != 4 or batch.shape[1:] != (3, s, s):
            raise ValueError(f"expected a batch of shape (B,3,{s},{s}), got {batch.shape}")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.outputs}
        layers = tuple(range(self.cfg.head.num_layers)) if self.cross_attention else ()
        with torch.inference_mode():
            for a in range(0, len(batch), self.batch_size):
                x = torch.from_numpy(batch[a : a + self.batch_size]).to(self.device, self.dtype)
                norms: list[torch.Tensor] = []
                tokens = self.model.image_tokens(x, norms)
                parts["block_norms"].append(torch.stack(norms, 1).float().cpu().numpy())
                logits, probs_by_layer = self.model.tag_logits(tokens, layers)
                probs = torch.sigmoid(logits.float()).cpu().numpy()
                ids = _top_k(probs, self.top_k_tags, self.candidate_tags)
                maps = self.model.tag_attention(tokens, torch.from_numpy(ids).to(self.device), self.attention_layer)
                parts["tokens"].append(tokens.float().cpu().numpy())
                parts["features"].append(parts["tokens"][-1][:, 0].copy())
                parts["tag_probs"].append(probs)
                parts["tag_ids"].append(ids)
                parts["tag_attention"].append(maps.float().cpu().numpy())
                if self.cross_attention:
                    parts["cross_attention"].append(torch.stack([probs_by_layer[i] for i in layers], 1).float().cpu().numpy())
        cat = {k: np.concatenate(v) for k, v in parts.items()}
        extra = {"cross_attention": cat.pop("cross_attention")} if self.cross_attention else {}
        return ModelOutput(features=cat["features"], tokens=cat["tokens"], tag_probs=cat["tag_probs"], tag_ids=cat["tag_ids"],
                           tag_attention=cat["tag_attention"], block_norms=cat["block_norms"], extra=extra)

    def torch_module(self) -> torch.nn.Module:
        """Differentiable images (B,3,S,S) -> ``features`` (B,512) (the pooled image token), sharing this
        tagger's weights (eval mode, its device); for ODIN's input gradients through the tagger."""
        return RAMFeatures(self.model)

    # -- recomputation from cached tokens ------------------------------------------------------
    def attend(self, tokens: np.ndarray, tag_ids: np.ndarray, layer: int | None = None) -> np.ndarray:
        """Cross-attention maps (B,k,N) of tags ``tag_ids`` (B,k) over cached image tokens (B,N,512),
        summed over heads, in head layer ``layer`` (default: this tagger's ``attention_layer``)."""
        layer = self.attention_layer if layer is None else int(layer)
        tokens = np.asarray(tokens)
        tag_ids = np.asarray(tag_ids, dtype=np.int64)
        if tokens.ndim != 3 or tag_ids.ndim != 2 or len(tokens) != len(tag_ids):
            raise ValueError(f"attend needs tokens (B,N,D) and tag_ids (B,k), got {tokens.shape} and {tag_ids.shape}")
        out = []
        step = max(1, self.batch_size * 8)
        with torch.inference_mode(), progress_bar("RAM tag attention", len(tokens), enabled=len(tokens) > 8 * step) as advance:
            for a in range(0, len(tokens), step):
                t = torch.as_tensor(tokens[a : a + step]).to(self.device, self.dtype)
                ids = torch.as_tensor(tag_ids[a : a + step]).to(self.device)
                out.append(self.model.tag_attention(t, ids, layer).float().cpu().numpy())
                advance(len(t))
        return np.concatenate(out) if out else np.zeros((0, tag_ids.shape[1], tokens.shape[1]), np.float32)

    def tag_probs_from_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """Tag probabilities (B,T) from cached image tokens (B,N,512)."""
        out = []
        with torch.inference_mode(), progress_bar("RAM tag probabilities", len(tokens),
                                                  enabled=len(tokens) > 8 * self.batch_size) as advance:
            for a in range(0, len(tokens), self.batch_size):
                t = torch.as_tensor(np.asarray(tokens[a : a + self.batch_size])).to(self.device, self.dtype)
                out.append(torch.sigmoid(self.model.tag_logits(t)[0].float()).cpu().numpy())
                advance(len(t))
        return np.concatenate(out)

    def tags_above_threshold(self, tag_probs: np.ndarray) -> list[list[str]]:
        """RAM's tagging decision: names of the tags whose probability exceeds their threshold."""
        hit = np.asarray(tag_probs) > self.tag_thresholds[None]
        return [[self.tag_names[j] for j in np.flatnonzero(row)] for row in hit]


class RAMFeatures(torch.nn.Module):
    """images -> RAM's pooled image token ``image_proj(swin(x))[:, 0]``, differentiable in the input.
    ``pixel_std``: the per-channel std of RAM's preprocessing (ODIN divides its step by it)."""

    pixel_std: tuple[float, ...] = tuple(float(v) for v in IMAGENET_STD)

    def __init__(self, model: RAMModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = next(self.model.parameters())
        return self.model.image_tokens(x.to(p.device, p.dtype))[:, 0].float()


def load_ram(checkpoint: str | Path, tag_list: str | Path | None = None, thresholds: str | Path | None = None,
             device: str = "cpu", config: RAMConfig | dict[str, Any] | None = None, image_size: int | None = None,
             head_heads: int = 4, dtype: torch.dtype = torch.float32, **tagger_options: Any) -> RAMTagger:
    """Load a RAM / RAM++ tagger.

    ``checkpoint`` is an official ``.pth`` (``{"model": state_dict}`` or a bare state dict; only the
    tagger's keys are kept) with ``tag_list`` (``ram_tag_list.txt``) and optionally ``thresholds``
    (``ram_tag_list_threshold.txt``), or a folder written by :func:`convert_ram` (its own tag list
    and thresholds are used unless given). ``config`` fixes the architecture; by default it is read
    from the tensor shapes (:func:`tagood.backbones.ram_convert.infer_config`). Remaining keyword
    arguments go to :class:`RAMTagger` (``batch_size``, ``top_k_tags``, ``attention_layer``,
    ``candidate_tags``, ``resize``, ``cross_attention``).
    """
    p = Path(checkpoint)
    if isinstance(config, dict):
        config = RAMConfig.from_dict(config)
    if p.is_dir():
        if not (p / CONFIG_FILE).is_file():
            raise RAMCheckpointError(f"{p} is a folder without {CONFIG_FILE}; pass a RAM .pth checkpoint or a folder written by "
                                     "`tagood convert ram`")
        cfg, sd, meta = read_converted(p)
        cfg = config or cfg
        tags = read_tag_list(tag_list if tag_list is not None else p / meta.get("tag_list", TAGS_FILE))
        thr_path = thresholds if thresholds is not None else (p / meta["thresholds"] if meta.get("thresholds") else None)
        whash = str(meta.get("weights_sha256", ""))
        source = str(p)
    else:
        if tag_list is None:
            raise RAMCheckpointError(f"loading {p} needs the RAM tag list (ram_tag_list.txt, one tag per line): pass tag_list=")
        tags = read_tag_list(tag_list)
        source = str(p)
        sd = tagger_state_dict(read_state_dict(p), source)
        cfg = config or infer_config(sd, len(tags), image_size=image_size, head_heads=head_heads, source=source)
        thr_path = thresholds
        whash = ""
    if cfg.num_tags != len(tags):
        raise RAMCheckpointError(f"{source}: the model has {cfg.num_tags} tags but the tag list has {len(tags)}")
    thr = read_thresholds(thr_path, len(tags)) if thr_path is not None else None
    model = RAMModel(cfg)
    load_into(model, sd, source)
    if not whash:
        whash = state_hash(model.state_dict())
    log.info("loaded %s from %s: %d tags, Swin %s at %d px, weights %s", cfg.variant, source, cfg.num_tags,
             "-".join(map(str, cfg.swin.depths)), cfg.swin.img_size, whash)
    return RAMTagger(model, tags, thr, device=device, weights_hash=whash, dtype=dtype, **tagger_options)
