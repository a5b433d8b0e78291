"""CLIP as a dense tagger over a text vocabulary (implements :class:`tagood.core.types.Backbone`).

Tags are the words of a user vocabulary, each turned into a text embedding by prompt templates
(``"a photo of a {}."`` by default, several templates averaged as CLIP does). Per image:

* ``image_embeds`` / ``features`` (B,E): CLIP's normalised image embedding;
* ``tokens`` (B,1+P,E): the projected class-token embedding followed by the P projected patch
  tokens, the same "pooled token + patch grid" layout as RAM's 145 tokens (position 0 = pooled);
* ``tag_probs`` (B,T): ``softmax(logit_scale * image . text)`` over the vocabulary. Softmax, not
  sigmoid: CLIP is trained with a softmax contrastive loss, so its cosine similarities only have a
  calibrated meaning relative to the other prompts (``logit_scale`` is 100 for released models);
* ``tag_ids`` (B,k) the top-k tags and ``tag_attention`` (B,k,1+P): cosine similarity of each
  token with the tag's text embedding (raw; TagOOD min-max normalises per tag);
* ``block_norms`` (B, n_blocks): FeatureNorm (Yu et al., CVPR 2023) of every ViT block's output
  over its patch tokens (:func:`tagood.backbones.clip.vit_block_norm`), for ``featurenorm``.

:meth:`CLIPDenseTagger.torch_module` is the differentiable path images -> ``features`` (the vision
tower + projection + L2 normalisation) that ODIN back-propagates through, with the IND head on top.

Dense patch tokens come from the MaskCLIP value path of the last block (Zhou, Loy & Dai,
"Extract Free Dense Labels from CLIP", ECCV 2022) by default: ordinary last-layer patch tokens of
CLIP ViTs are dominated by global context (every patch resembles the class token), so their
similarity maps do not localise; the value path keeps each patch's own content while staying in
the space the projection expects. ``dense="tokens"`` selects the ordinary tokens instead.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tagood.backbones.clip import CLIPDualEncoder, CLIPLoadError, load_clip
from tagood.backbones.prompts import DEFAULT_TEMPLATE
from tagood.core.numeric import l2_normalize, softmax
from tagood.core.types import ModelOutput

log = logging.getLogger(__name__)


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices (B,k) of the k largest entries per row, in descending order (stable on ties)."""
    k = min(int(k), probs.shape[1])
    if k < probs.shape[1]:
        part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(k), (len(probs), 1))
    order = np.argsort(-np.take_along_axis(probs, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64)


class CLIPDenseTagger:
    """CLIP dense tagger (Backbone protocol): tags = a text vocabulary, attention = patch-text similarity."""

    outputs: tuple[str, ...] = ("features", "tokens", "tag_probs", "tag_ids", "tag_attention", "image_embeds", "block_norms")

    def __init__(self, encoder: CLIPDualEncoder, vocabulary: Sequence[str], templates: Sequence[str] = (DEFAULT_TEMPLATE,),
                 top_k_tags: int = 10, dense: str = "value", logit_scale: float | None = None) -> None:
        if dense not in ("value", "tokens"):
            raise ValueError(f"dense must be 'value' or 'tokens', got {dense!r}")
        self.vocabulary = [str(v) for v in vocabulary]
        if not self.vocabulary:
            raise ValueError("the CLIP tagger needs a non-empty vocabulary")
        self.encoder = encoder
        self.templates = list(templates)
        self.top_k_tags = int(top_k_tags)
        self.dense = dense
        self.scale = float(logit_scale) if logit_scale is not None else encoder.logit_scale
        self.text_embeds = encoder.encode_prompts(self.vocabulary, self.templates)  # (T,E) normalised
        h = hashlib.sha256("\n".join(self.vocabulary + ["--"] + self.templates).encode()).hexdigest()[:8]
        self.id = f"{encoder.name}-dense-{dense}-vocab{len(self.vocabulary)}-{h}-s{self.scale:g}"
        self.weights_hash = encoder.weights_hash
        self.transform_id = encoder.transform_id

    @property
    def tag_names(self) -> list[str]:
        """The vocabulary (tag ``i`` is ``vocabulary[i]``)."""
        return list(self.vocabulary)

    def preprocess(self, image: Any) -> np.ndarray:
        return self.encoder.preprocess(image)

    def attend(self, tokens: np.ndarray, tag_ids: np.ndarray) -> np.ndarray:
        """Cosine similarity (B,k,N) of tokens (B,N,E) with the text embeddings of ``tag_ids`` (B,k)."""
        t = self.text_embeds[np.asarray(tag_ids, dtype=np.int64)]  # (B,k,E)
        return np.einsum("bke,bne->bkn", t, l2_normalize(tokens, dtype=np.float32), optimize=True).astype(np.float32)

    def forward(self, batch: np.ndarray) -> ModelOutput:
        """Preprocessed batch (B,3,H,W) -> ModelOutput of float32 numpy arrays (see module docstring)."""
        img, patches, norms = self.encoder.encode_images_patches_norms(batch, dense=self.dense)
        # position 0: the normalised image embedding stands for the pooled token (as RAM's token 0)
        tokens = np.concatenate([img[:, None, :], patches], axis=1).astype(np.float32)
        probs = softmax(self.scale * (img @ self.text_embeds.T), dtype=np.float32)
        ids = top_k(probs, self.top_k_tags)
        return ModelOutput(features=img, tokens=tokens, tag_probs=probs, tag_ids=ids,
                           tag_attention=self.attend(tokens, ids), block_norms=norms, extra={"image_embeds": img})

    def torch_module(self) -> torch.nn.Module:
        """Differentiable images (B,3,H,W) -> ``features`` (B,E) (the normalised image embedding), through
        the CLIP vision tower this tagger uses (shared weights); for ODIN's input gradients."""
        return CLIPFeatures(self.encoder)


class CLIPFeatures(torch.nn.Module):
    """images -> CLIP's normalised image embedding, differentiable in the input; ``pixel_std`` is the
    per-channel std of the CLIP preprocessing (ODIN divides its step by it)."""

    def __init__(self, encoder: CLIPDualEncoder) -> None:
        super().__init__()
        self.clip = encoder.model  # registered, so .to()/.eval() reach the weights
        self._encoder = encoder
        self.pixel_std = tuple(float(v) for v in np.asarray(encoder.transform.std).reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._encoder.image_embeds_torch(x)


def load_clip_tagger(path: str | Path, vocabulary: Sequence[str] | str | Path | None = None,
                     templates: Sequence[str] = (DEFAULT_TEMPLATE,), arch: str | None = None, device: str = "cpu",
                     batch_size: int = 64, top_k_tags: int = 10, dense: str = "value") -> CLIPDenseTagger:
    """A :class:`CLIPDenseTagger` over ``vocabulary``: a list of tag
    names, a text file with one tag per line, or ``None`` for the 1000 ImageNet-1K class names
    (packaged). Needs a Hugging Face CLIP directory (dense tokens use its vision tower)."""
    enc = load_clip(path, arch=arch, device=device, batch_size=batch_size)
    if not isinstance(enc, CLIPDualEncoder):
        raise CLIPLoadError(f"{path}: the dense CLIP tagger needs a Hugging Face CLIP directory; open_clip models only "
                            "provide the dual encoder (encode_images / encode_texts)")
    if vocabulary is None:
        from tagood.assets import imagenet_classes

        names: list[str] = imagenet_classes()
    elif isinstance(vocabulary, (str, Path)):
        vp = Path(vocabulary)
        try:
            names = [line.strip() for line in vp.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as e:
            raise CLIPLoadError(f"cannot read the tag vocabulary {vp}: {e}; give a text file with one tag per line") from e
    else:
        names = [str(v) for v in vocabulary]
    return CLIPDenseTagger(enc, names, templates=templates, top_k_tags=top_k_tags, dense=dense)
