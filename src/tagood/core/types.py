"""Core data types shared by every layer: model outputs, ragged token sets, tag attention, the linear head.

Import direction is one-way (data -> backbones -> cache -> detectors/tagood -> bench -> cli);
this module sits below all of them and depends on numpy only (torch is optional at runtime).
``FeatureSet`` lives in :mod:`tagood.core.featureset` and ``Context`` in :mod:`tagood.core.context` (both import this
module); the image stream (``FeatureSet.images``) in :mod:`tagood.core.images`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np

#: Names of the per-sample inputs a detector can declare in ``Detector.requires``.
INPUT_FIELDS: tuple[str, ...] = (
    "logits",  # (N, C) IND-class logits (from the fitted linear head, or the model's own head)
    "features",  # (N, D) pooled penultimate features
    "tokens",  # TokenSet: ragged spatial token sets (N samples, n_i tokens each, dim Dt)
    "tag_probs",  # (N, T) tagger probabilities
    "tag_attention",  # TagAttention: maps of the top-k tags over the tokens
    "block_norms",  # (N, B) per-block feature norms (FeatureNorm)
    "images",  # tagood.core.images.ImageStream: preprocessed images, for input-perturbation methods (ODIN)
    "image_embeds",  # (N, E) dual-encoder image embeddings (VLM methods)
    "patch_embeds",  # TokenSet of dual-encoder patch embeddings (GL-MCM, LoCoOp)
)


@dataclass
class ModelOutput:
    """What one forward pass of a backbone or tagger gives. Every field is optional.

    Shapes (B = batch): ``logits (B,C)``, ``features (B,D)`` pooled, ``tokens (B,N,Dt)`` spatial
    tokens, ``tag_probs (B,T)``, ``tag_attention (B,T,N)`` attention of each tag over the N tokens
    (or ``(B,k,N)`` for the tags listed in ``tag_ids (B,k)`` when a tagger only returns its top-k),
    ``block_norms (B,nb)``. Arrays are numpy (float32) or torch tensors, per the producer's doc.
    """

    logits: Any = None
    features: Any = None
    tokens: Any = None
    tag_probs: Any = None
    tag_attention: Any = None
    tag_ids: Any = None
    block_norms: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def present(self) -> list[str]:
        """Names of the fields that are set."""
        return [f.name for f in fields(self) if f.name != "extra" and getattr(self, f.name) is not None]


@dataclass
class TokenSet:
    """A ragged batch of token sets: sample ``i`` owns ``values[offsets[i]:offsets[i+1]]``.

    ``positions`` (same length as ``values``) is each token's spatial index in the model's token
    grid (e.g. 0..48 for a 7x7 map, 0..144 for RAM's pooled token + 12x12 patches), so a subset of
    tokens keeps where it came from.
    """

    values: np.ndarray  # (sum_n, D)
    offsets: np.ndarray  # (N+1,) int64, offsets[0] == 0, offsets[-1] == len(values)
    positions: np.ndarray  # (sum_n,) int64

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.positions = np.asarray(self.positions, dtype=np.int64)
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[0] != 0:
            raise ValueError("TokenSet.offsets must be 1-D and start at 0")
        if self.offsets[-1] != len(self.values) or len(self.positions) != len(self.values):
            raise ValueError(
                f"TokenSet sizes disagree: offsets end at {self.offsets[-1]}, "
                f"{len(self.values)} values, {len(self.positions)} positions"
            )
        if np.any(np.diff(self.offsets) < 0):
            raise ValueError("TokenSet.offsets must be non-decreasing")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and spatial positions of sample ``i``."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.values[a:b], self.positions[a:b]

    def select(self, idx: np.ndarray) -> TokenSet:
        """A new TokenSet holding samples ``idx`` in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        lens = self.lengths[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        gather = np.repeat(self.offsets[idx] - offsets[:-1], lens) + np.arange(offsets[-1], dtype=np.int64)
        return TokenSet(self.values[gather], offsets, self.positions[gather])

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> TokenSet:
        """All tokens of a dense ``(N, n, D)`` array, positions ``0..n-1``."""
        n_samples, n, d = dense.shape
        offsets = np.arange(n_samples + 1, dtype=np.int64) * n
        positions = np.tile(np.arange(n, dtype=np.int64), n_samples)
        return cls(dense.reshape(n_samples * n, d), offsets, positions)

    @classmethod
    def concat(cls, parts: list[TokenSet]) -> TokenSet:
        if not parts:
            raise ValueError("TokenSet.concat needs at least one part")
        values = np.concatenate([p.values for p in parts])
        positions = np.concatenate([p.positions for p in parts])
        lens = np.concatenate([p.lengths for p in parts])
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        return cls(values, offsets, positions)

    def pad(self, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dense padded view: ``tokens (N,L,D)``, ``positions (N,L)``, ``mask (N,L)`` (True = real)."""
        lens = self.lengths
        L = int(max_len if max_len is not None else (lens.max() if len(lens) else 0))
        n = len(self)
        out = np.zeros((n, L, self.dim), dtype=self.values.dtype)
        pos = np.zeros((n, L), dtype=np.int64)
        mask = np.zeros((n, L), dtype=bool)
        row = np.repeat(np.arange(n), lens)
        col = np.arange(len(self.values)) - np.repeat(self.offsets[:-1], lens)
        keep = col < L
        out[row[keep], col[keep]] = self.values[keep]
        pos[row[keep], col[keep]] = self.positions[keep]
        mask[row[keep], col[keep]] = True
        return out, pos, mask


@dataclass
class TagAttention:
    """Attention maps of each sample's top-k tags over its N tokens.

    ``ids (S,k)`` tag indices (into the tagger's vocabulary), sorted by descending probability;
    ``maps (S,k,N)`` the raw (un-normalised) attention of each of those tags over the tokens
    (CAM: class activation map; RAM: cross-attention summed over heads; CLIP: patch-text
    similarity). Token order matches ``FeatureSet.tokens`` positions.
    """

    ids: np.ndarray
    maps: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class LinearHead:
    """A linear classifier ``logits = features @ weight.T + bias`` over IND classes."""

    weight: np.ndarray  # (C, D)
    bias: np.ndarray  # (C,)
    class_names: list[str] | None = None

    def __call__(self, features: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """Logits ``(N,C)`` of features ``(N,D)``, computed in ``dtype`` (float32 unless asked otherwise)."""
        return np.asarray(features, dtype=dtype) @ self.weight.T.astype(dtype) + self.bias.astype(dtype)


@runtime_checkable
class Backbone(Protocol):
    """A feature extractor / tagger that the extraction pipeline can run.

    ``id`` names the architecture, ``weights_hash`` the exact weights (sha256 prefix),
    ``transform_id`` the preprocessing; the three key the feature cache.
    """

    id: str
    weights_hash: str
    transform_id: str
    outputs: tuple[str, ...]

    def preprocess(self, image: Any) -> np.ndarray:
        """PIL RGB image -> float32 array ``(3, H, W)``."""
        ...

    def forward(self, batch: np.ndarray) -> ModelOutput:
        """Preprocessed batch ``(B,3,H,W)`` -> ModelOutput of numpy arrays."""
        ...


def pooled_logits(backbone: Backbone, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(features (B,D), logits (B,C) or None)`` of a preprocessed batch: through the backbone's own
    ``pooled_logits(batch)`` when it has one (EfficientNet-Lite's pooled-only onnxruntime graph: the same values
    without the tokens, tags and CAMs), else from its full :meth:`Backbone.forward`. For callers that need no
    tokens (ODIN's perturbed pass, the offline dual encoder's image embeddings)."""
    own = getattr(backbone, "pooled_logits", None)
    if own is not None:
        pair: tuple[np.ndarray, np.ndarray | None] = own(batch)
        return pair
    out = backbone.forward(batch)
    return out.features, out.logits


@runtime_checkable
class DualEncoder(Protocol):
    """Image and text encoders into one embedding space of size ``embed_dim`` (CLIP: Radford et al.,
    ICML 2021), what the vision-language OOD methods build on.

    * ``encode_images(batch (B,3,H,W)) -> (B,E)`` L2-normalised float32;
    * ``encode_texts(texts) -> (T,E)`` L2-normalised float32;
    * ``logit_scale``: the temperature inverse (100 for released CLIP models);
    * ``preprocess(pil) -> (3,H,W)``; ``id``, ``weights_hash``, ``transform_id`` key cached embeddings;
    * optional ``patch_tokens(batch) -> (B,P,E)`` local features in the same space (GL-MCM, LoCoOp).
    """

    id: str
    weights_hash: str
    transform_id: str
    embed_dim: int

    @property
    def logit_scale(self) -> float: ...

    def preprocess(self, image: Any) -> np.ndarray: ...

    def encode_images(self, batch: Any) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...
