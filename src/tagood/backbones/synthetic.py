"""A synthetic RAM-shaped tagger for rehearsals: **tests and benchmarks only**, it has no weights and sees nothing.

:class:`SyntheticTagger` reads the identity a :class:`tagood.data.synthetic.SyntheticSource` image carries in its
pixels (IND or OOD set, class or latent cluster, a 32-bit sample id) and emits what RAM
(:class:`tagood.backbones.ram.RAMTagger`) emits, with the token count, width and tag count configurable:

* ``tokens (B,N,W)``: position 0 is the mean of the others (RAM's pooled token); each of the ``N - 1`` patch
  tokens is the image's class centre on the patches of its object region (chosen by the sample id) and a shared
  background vector elsewhere, plus noise picked by the sample id from fixed noise banks;
* ``features (B,W)``: the pooled token;
* ``tag_probs (B,T)``: a low background level (from a bank) with the image's class tags (3 per class or cluster)
  raised, by an amount that depends on the sample id;
* ``tag_ids (B,k)``, ``tag_attention (B,k,N)``: the top-k tags and their attention over the tokens,
  ``softmax(8 tokens . e_tag)`` (unit tag embeddings) (:meth:`SyntheticTagger.attend`, the same from cached tokens, like RAM's
  layer 0);
* ``block_norms (B,nb)``: a per-block level, lower for OOD images, with noise.

A class centre mixes the embeddings of the class's tags with a random direction; an OOD set's clusters have
centres of their own, so the detectors have something to separate (how much: ``separation``). Every value is a
function of the image's identity and the tagger's options only: the same image gives the same outputs in any batch,
on any process. The cost per image is a few array copies (plus ``k * N * W`` multiply-adds for the attention).

Built by :func:`tagood.backbones.factory.build_backbone` from ``{"name": "synthetic", ...}``; used by
``benchmarks/scale_rehearsal.py`` and the tests.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
from PIL import Image

from tagood.core.types import ModelOutput
from tagood.data.synthetic import IMAGE_SIDE, decode_identity

__all__ = ["SyntheticTagger"]

log = logging.getLogger(__name__)

_BANK = 61  # noise bank sizes (coprime, so the pair picked by a sample id repeats only every 61 * 67 samples)
_BANK2 = 67
_TAGS_PER_CLASS = 3
_SHARPNESS = 8.0  # attention logits: (token . tag embedding) x this (tokens and embeddings are of norm ~1)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class SyntheticTagger:
    """RAM-shaped outputs from a synthetic image's identity (see the module docstring); rehearsals and tests only.

    Args:
        tokens: tokens per image ``N`` (RAM: 145, the pooled token and a 12x12 grid).
        width: token and feature width ``W`` (RAM: 512 after its projection; Swin-L's 1,536).
        tags: number of tags ``T`` (RAM: 4,585).
        top_k_tags: tags (with their attention maps) per image.
        blocks: block norms per image (Swin-L: 24).
        separation: how far OOD clusters are from the IND classes: 1 gives them independent centres, 0 puts each on
            the centre of an IND class (one of classes 0..999).
        noise: the noise level of the tokens (relative to a centre's norm of 1).
        seed: seeds the centres, tag embeddings and noise banks.
        batch_size: accepted for the backbone interface (the forward handles any batch at once).
        device: accepted for the backbone interface (numpy on the CPU).
    """

    transform_id = f"synthetic-identity-{IMAGE_SIDE}px"

    def __init__(self, tokens: int = 145, width: int = 64, tags: int = 200, top_k_tags: int = 10, blocks: int = 24,
                 separation: float = 1.0, noise: float = 0.5, seed: int = 0, batch_size: int = 256,
                 device: str = "cpu") -> None:
        if tokens < 2 or width < 1 or tags < _TAGS_PER_CLASS or top_k_tags < 1 or blocks < 1:
            raise ValueError(f"synthetic tagger: tokens >= 2, width >= 1, tags >= {_TAGS_PER_CLASS}, top_k_tags >= 1 and "
                             f"blocks >= 1 (got {tokens}, {width}, {tags}, {top_k_tags}, {blocks})")
        if not 0.0 <= separation <= 1.0 or noise < 0:
            raise ValueError(f"synthetic tagger: separation in [0, 1] and noise >= 0 (got {separation}, {noise})")
        self.n_tokens, self.width, self.n_tags = int(tokens), int(width), int(tags)
        self.top_k_tags = int(min(top_k_tags, tags))
        self.n_blocks, self.separation, self.noise, self.seed = int(blocks), float(separation), float(noise), int(seed)
        self.batch_size, self.device = int(batch_size), device
        self.outputs: tuple[str, ...] = ("features", "tokens", "tag_probs", "tag_ids", "tag_attention", "block_norms")
        opts = (f"n{self.n_tokens}-w{self.width}-t{self.n_tags}-top{self.top_k_tags}-b{self.n_blocks}"
                f"-sep{self.separation:g}-noise{self.noise:g}")
        self.id = f"synthetic-tagger-{opts}"
        self.weights_hash = hashlib.sha256(f"synthetic-v1-{opts}-seed{self.seed}".encode()).hexdigest()[:16]
        self.tag_names = [f"synthetic-tag-{j}" for j in range(self.n_tags)]
        self.tag_thresholds = np.full(self.n_tags, 0.5, np.float32)
        rng = np.random.default_rng([self.seed, 0])
        n, w = self.n_tokens - 1, self.width
        self._embed = _unit(rng.standard_normal((self.n_tags, w), dtype=np.float32))
        self._background = _unit(rng.standard_normal(w, dtype=np.float32)) * np.float32(0.5)
        self._noise1 = rng.standard_normal((_BANK, n, w), dtype=np.float32) * np.float32(self.noise / np.sqrt(w))
        self._noise2 = rng.standard_normal((_BANK2, n, w), dtype=np.float32) * np.float32(self.noise / np.sqrt(w))
        masks = np.zeros((_BANK, n), bool)  # object regions: a random quarter to half of the patches
        for r in range(_BANK):
            masks[r, rng.choice(n, size=max(1, int(n * rng.uniform(0.25, 0.5))), replace=False)] = True
        self._masks = masks
        self._tag_floor = (rng.uniform(0.001, 0.05, (_BANK2, self.n_tags))).astype(np.float32)
        self._norm_noise = rng.normal(0.0, 0.05, (_BANK, self.n_blocks)).astype(np.float32)
        self._centres: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    # -- the Backbone protocol -----------------------------------------------------------------
    def preprocess(self, image: Image.Image) -> np.ndarray:
        """A synthetic image -> float32 ``(3, 4, 4)`` holding its raw byte values (the identity stays readable); an
        image of another size is first resized to 4x4 (nearest), and is then a foreign image to :meth:`forward`."""
        img = image.convert("RGB") if image.mode != "RGB" else image
        if img.size != (IMAGE_SIDE, IMAGE_SIDE):  # not a synthetic image: any other picture becomes a foreign one
            img = img.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.NEAREST)
        return np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1))

    def _centre(self, kind: int, label: int) -> tuple[np.ndarray, np.ndarray]:
        """``(centre (W,), tags (3,))`` of IND class ``label`` (kind 0) or cluster ``label`` of OOD set ``kind - 1``."""
        key = (kind, label)
        got = self._centres.get(key)
        if got is None:
            rng = np.random.default_rng([self.seed, 1 + kind, label])
            tags = rng.choice(self.n_tags, size=_TAGS_PER_CLASS, replace=False)
            centre = _unit(0.6 * _unit(self._embed[tags].sum(0)) + 0.8 * _unit(rng.standard_normal(self.width)))
            if kind:  # an OOD cluster (or a foreign image's): pulled towards an IND class as separation falls
                ind, _ = self._centre(0, int(rng.integers(0, 1000)))
                centre = _unit(self.separation * centre + (1.0 - self.separation) * ind)
            got = (centre, tags)
            self._centres[key] = got
        return got

    def forward(self, batch: np.ndarray) -> ModelOutput:
        """Synthetic batch ``(B,3,4,4)`` -> RAM-shaped :class:`ModelOutput` of float32 numpy arrays (int64 ``tag_ids``).

        Args:
            batch: preprocessed :class:`~tagood.data.synthetic.SyntheticSource` images.

        Returns:
            ``features (B,W)``, ``tokens (B,N,W)``, ``tag_probs (B,T)``, ``tag_ids (B,k)``, ``tag_attention (B,k,N)``,
            ``block_norms (B,nb)``.
        """
        kind, label, uid = decode_identity(batch)
        b = len(kind)
        pairs = [self._centre(int(k), int(c)) for k, c in zip(kind.tolist(), label.tolist(), strict=True)]
        centres = np.stack([p[0] for p in pairs]) if b else np.zeros((0, self.width), np.float32)
        r1, r2 = uid % _BANK, (uid // _BANK) % _BANK2
        mask = self._masks[r1][:, :, None]
        patches = np.where(mask, centres[:, None, :], self._background[None, None, :])
        patches += self._noise1[r1]
        patches += self._noise2[r2]
        tokens = np.empty((b, self.n_tokens, self.width), np.float32)
        tokens[:, 1:] = patches
        tokens[:, 0] = patches.mean(axis=1)
        probs = self._tag_floor[r2].copy()
        strength = 0.55 + 0.4 * ((uid % 1009) / 1009.0)
        for j, (_, tags) in enumerate(pairs):
            probs[j, tags] = strength[j] * np.array([1.0, 0.9, 0.8], np.float32)
        k = self.top_k_tags
        part = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < self.n_tags else np.tile(np.arange(k), (b, 1))
        order = np.argsort(-np.take_along_axis(probs, part, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(part, order, axis=1).astype(np.int64)
        level = np.where(kind == 0, 1.0, 0.85).astype(np.float32)  # FeatureNorm: OOD images have lower norms
        norms = level[:, None] * (1.0 + np.linspace(0, 0.5, self.n_blocks, dtype=np.float32))[None] + self._norm_noise[r1]
        return ModelOutput(features=tokens[:, 0].copy(), tokens=tokens, tag_probs=probs, tag_ids=ids,
                           tag_attention=self.attend(tokens, ids), block_norms=norms.astype(np.float32))

    def attend(self, tokens: np.ndarray, tag_ids: np.ndarray, layer: Any = None) -> np.ndarray:
        """Attention maps ``(B,k,N)`` of tags ``tag_ids (B,k)`` over tokens ``(B,N,W)``: ``softmax_n(8 t_n . e_tag)``
        (``e_tag`` the tag's unit embedding), each row summing to 1 (the same maps as the forward's, from cached tokens).

        Args:
            tokens: the images' tokens.
            tag_ids: the tags, per image.
            layer: accepted for RAM's signature (there is one layer).

        Returns:
            float32 maps.
        """
        t = np.asarray(tokens, dtype=np.float32)
        ids = np.asarray(tag_ids, dtype=np.int64)
        if t.ndim != 3 or ids.ndim != 2 or len(t) != len(ids) or t.shape[2] != self.width:
            raise ValueError(f"attend needs tokens (B,N,{self.width}) and tag_ids (B,k), got {t.shape} and {ids.shape}")
        logits = np.matmul(self._embed[ids], t.transpose(0, 2, 1)) * np.float32(_SHARPNESS)
        logits -= logits.max(axis=2, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=2, keepdims=True)
        return logits.astype(np.float32, copy=False)
