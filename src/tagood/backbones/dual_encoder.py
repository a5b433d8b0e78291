"""The dual-encoder protocol the vision-language OOD methods build on, and helpers that attach
dual-encoder embeddings to a cached :class:`tagood.core.types.FeatureSet`.

A dual encoder maps images and texts into one space where cosine similarity measures agreement
(CLIP: Radford et al., ICML 2021). Implementations: :class:`tagood.backbones.clip.CLIPDualEncoder`
(real CLIP from the user's disk, wrapped by :class:`EncoderAdapter`) and
:class:`tagood.backbones.offline.OfflineDualEncoder` (EfficientNet-Lite0 + MiniLM stand-in that ships
with the package).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tagood.core.featureset import FeatureSet
from tagood.core.images import ImageStream
from tagood.core.numeric import l2_normalize
from tagood.core.types import DualEncoder, TokenSet
from tagood.runtime.progress import progress_bar

__all__ = ["DualEncoder", "EncoderAdapter", "embed_stream", "source_indices"]

log = logging.getLogger(__name__)


def source_indices(fs: FeatureSet, source: Any) -> np.ndarray:
    """Indices into ``source`` of the samples of ``fs`` (matched by identifier when ``fs.paths`` is set)."""
    if fs.paths is None:
        if len(fs) != len(source):
            raise ValueError(f"feature set '{fs.name}' has {len(fs)} samples and no identifiers, source '{source.name}' has "
                             f"{len(source)}; cannot align them")
        return np.arange(len(source), dtype=np.int64)
    where = {s.ident: i for i, s in enumerate(source.samples)}
    missing = [p for p in fs.paths if p not in where]
    if missing:
        raise ValueError(f"{len(missing)} samples of '{fs.name}' (e.g. {missing[0]}) are not in source '{source.name}'")
    return np.asarray([where[p] for p in fs.paths], dtype=np.int64)


def embed_stream(encoder: Any, stream: Any, batch_size: int = 64, patches: bool = False,
                 desc: str = "dual-encoder embeddings") -> tuple[np.ndarray, TokenSet | None]:
    """Image embeddings ``(N,E)`` (and patch embeddings as a TokenSet, L2-normalised) of a stream."""
    imgs: list[np.ndarray] = []
    pts: list[np.ndarray] = []
    with progress_bar(desc, len(stream)) as advance:
        for batch in stream.batches(batch_size):
            if patches and hasattr(encoder, "encode_images_and_patches"):
                i, p = encoder.encode_images_and_patches(batch)
            else:
                i = encoder.encode_images(batch)
                p = encoder.patch_tokens(batch) if patches else None
            imgs.append(l2_normalize(i, dtype=np.float32))
            if p is not None:
                pts.append(l2_normalize(p, dtype=np.float32))
            advance(len(batch))
    e = np.concatenate(imgs) if imgs else np.zeros((0, encoder.embed_dim), np.float32)
    return e, (TokenSet.from_dense(np.concatenate(pts)) if pts else None)


class EncoderAdapter:
    """Wraps a dual encoder that lacks ``id`` / ``attach`` (e.g. :class:`tagood.backbones.clip.CLIPDualEncoder`)
    so it satisfies :class:`DualEncoder`; every other attribute is delegated."""

    def __init__(self, encoder: Any, batch_size: int = 64, patches: bool = True) -> None:
        self.encoder = encoder
        self.id = str(getattr(encoder, "id", None) or getattr(encoder, "name", type(encoder).__name__))
        self.batch_size = batch_size
        self.patches = patches and hasattr(encoder, "patch_tokens")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["encoder"], name)

    @property
    def logit_scale(self) -> float:
        return float(self.encoder.logit_scale)

    def encode_images_and_patches(self, batch: Any) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(self.encoder, "encode_images_and_patches"):
            i, p = self.encoder.encode_images_and_patches(batch)
        else:
            i, p = self.encoder.encode_images(batch), self.encoder.patch_tokens(batch)
        return l2_normalize(i, dtype=np.float32), l2_normalize(p, dtype=np.float32)

    def attach(self, fs: FeatureSet, source: Any) -> FeatureSet:
        """Compute ``image_embeds`` / ``patch_embeds`` of ``fs``'s samples from ``source`` and set
        ``fs.images`` to a stream with this encoder's preprocessing (for crop-based training)."""
        # decoded in this thread (workers=0): the encoder's transform may run torch code
        stream = ImageStream(source=source, indices=source_indices(fs, source), preprocess=self.encoder.preprocess,
                             workers=0)
        fs.image_embeds, fs.patch_embeds = embed_stream(self, stream, self.batch_size, self.patches,
                                                        desc=f"{self.id} embeddings: {fs.name}")
        fs.images = stream
        return fs
