"""Synthetic image sources for rehearsals: **tests and benchmarks only**, never a data set to evaluate a detector on.

:class:`SyntheticSource` holds ``n`` tiny (4x4 RGB) images that need no files: each image's pixels are its identity
(which part it belongs to, its class and a 32-bit sample id), written by :func:`encode_identity`. The rehearsal
tagger :class:`tagood.backbones.synthetic.SyntheticTagger` reads the identity back (:func:`decode_identity`) and
emits RAM-shaped outputs from it, so a benchmark at ImageNet-1K counts exercises the real extraction, cache,
streaming and scoring code at almost no decoding or model cost (``benchmarks/scale_rehearsal.py``).
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from tagood.data.source import DataSourceError, ImageSource, Sample

__all__ = ["FOREIGN", "IMAGE_SIDE", "PARTS", "SyntheticSource", "decode_identity", "encode_identity"]

#: side of a synthetic image in pixels (4x4x3 = 48 bytes; 7 carry the identity, the rest a checksum pattern)
IMAGE_SIDE = 4
#: the parts a synthetic source can be: IND train, IND test, an OOD set
PARTS = ("train", "test", "ood")
_MAGIC = 0xA5
#: the kind :func:`decode_identity` gives an image that is not a synthetic one
FOREIGN = 255


def encode_identity(kind: int, label: int, uid: int) -> np.ndarray:
    """The pixels of a synthetic image: ``(IMAGE_SIDE, IMAGE_SIDE, 3)`` uint8 holding ``(kind, label, uid)``.

    Args:
        kind: 0 for an IND image, ``1 + s`` for an image of OOD set ``s`` (0..254).
        label: its class (IND) or its latent OOD cluster, 0..65535.
        uid: a 32-bit sample id.

    Returns:
        The image's bytes (byte 0: a marker, 1: kind, 2-3: label, 4-7: uid, the rest a pattern of the uid).
    """
    if not 0 <= kind < 255 or not 0 <= label < 65536 or not 0 <= uid < 2**32:
        raise ValueError(f"synthetic identity out of range: kind {kind}, label {label}, uid {uid}")
    b = np.zeros(IMAGE_SIDE * IMAGE_SIDE * 3, np.uint8)
    b[0], b[1] = _MAGIC, kind
    b[2:4] = np.frombuffer(int(label).to_bytes(2, "big"), np.uint8)
    b[4:8] = np.frombuffer(int(uid).to_bytes(4, "big"), np.uint8)
    b[8:] = (np.arange(8, b.size) * 37 + uid) % 251
    return b.reshape(IMAGE_SIDE, IMAGE_SIDE, 3)


def decode_identity(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(kind, label, uid)`` (each ``(B,)`` int64) of a batch of synthetic images as the rehearsal tagger's
    ``preprocess`` leaves them: float ``(B, 3, IMAGE_SIDE, IMAGE_SIDE)`` holding the raw byte values.

    Args:
        batch: the preprocessed batch.

    Returns:
        The three identity arrays.

    An image without the synthetic marker (a jigsaw pseudo-OOD image made from synthetic ones, say) gets kind
    :data:`FOREIGN`, one of 16 clusters and an id from a hash of its bytes.

    Raises:
        ValueError: the batch is not of synthetic images' shape.
    """
    a = np.asarray(batch)
    if a.ndim != 4 or a.shape[1:] != (3, IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"a synthetic batch is (B,3,{IMAGE_SIDE},{IMAGE_SIDE}), got {a.shape}")
    b = np.clip(np.rint(a), 0, 255).astype(np.int64).transpose(0, 2, 3, 1).reshape(len(a), -1)
    kind = b[:, 1].copy()
    label = b[:, 2] * 256 + b[:, 3]
    uid = ((b[:, 4] * 256 + b[:, 5]) * 256 + b[:, 6]) * 256 + b[:, 7]
    foreign = np.flatnonzero((b[:, 0] != _MAGIC) | (kind == FOREIGN))
    for j in foreign.tolist():  # not a synthetic image (e.g. a jigsaw pseudo-OOD image made of one): its bytes' hash
        h = int.from_bytes(hashlib.blake2b(b[j].astype(np.uint8).tobytes(), digest_size=6).digest(), "big")
        kind[j], label[j], uid[j] = FOREIGN, (h >> 32) % 16, h & 0xFFFFFFFF
    return kind, label, uid


class SyntheticSource(ImageSource):
    """``n`` tiny synthetic images (no files) for rehearsals and tests: **not a data set**.

    IND parts (``train``, ``test``) are labelled ``i % num_classes`` (balanced); an OOD part (``ood``, set
    ``ood_set``) is unlabelled (-1) and its images belong to ``num_classes`` latent clusters of their own. Sample
    ``i``'s identifier is ``synthetic-<part><ood_set>:<i>``; its 32-bit id is a hash of that identifier, so the
    parts never share an image.

    Args:
        n: number of images.
        part: ``train``, ``test`` or ``ood``.
        num_classes: IND classes (IND parts) or latent clusters (an OOD part).
        ood_set: which OOD set (0..253) an ``ood`` part is; ignored for IND parts.
        name: the source's name (default ``synthetic-<part>``, ``synthetic-ood<ood_set>``).
    """

    def __init__(self, n: int, part: str = "train", num_classes: int = 10, ood_set: int = 0, name: str | None = None) -> None:
        if part not in PARTS:
            raise DataSourceError(f"synthetic source: part must be one of {', '.join(PARTS)}, not {part!r}")
        if n < 1 or not 1 <= num_classes < 65536 or not 0 <= ood_set < 254:
            raise DataSourceError(f"synthetic source: n >= 1, 1 <= num_classes < 65536 and 0 <= ood_set < 254 "
                                  f"(got n={n}, num_classes={num_classes}, ood_set={ood_set})")
        self.n, self.part, self.num_classes = int(n), part, int(num_classes)
        self.ood_set = int(ood_set) if part == "ood" else 0
        self.kind = 1 + self.ood_set if part == "ood" else 0
        self._prefix = f"synthetic-{part}{self.ood_set if part == 'ood' else ''}"
        self.name = name or self._prefix
        ind = part != "ood"
        self.class_names = [f"class{c}" for c in range(self.num_classes)] if ind else None
        self._samples: list[Sample] | None = None

    @property
    def samples(self) -> list[Sample]:
        if self._samples is None:
            ind = self.part != "ood"
            self._samples = [Sample(f"{self._prefix}:{i}", i % self.num_classes if ind else -1) for i in range(self.n)]
        return self._samples

    def __len__(self) -> int:
        return self.n

    def uid(self, i: int) -> int:
        """The 32-bit id of sample ``i`` (a hash of its identifier)."""
        return int.from_bytes(hashlib.blake2b(f"{self._prefix}:{i}".encode(), digest_size=4).digest(), "big")

    def _load(self, i: int) -> Image.Image:
        if not 0 <= i < self.n:
            raise IndexError(f"{self.name}: sample {i} of {self.n}")
        return Image.fromarray(encode_identity(self.kind, i % self.num_classes, self.uid(i)), "RGB")

    def content_id(self) -> str:
        return f"synthetic-v1-{self.part}-{self.ood_set}-{self.num_classes}"
