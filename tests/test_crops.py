"""KR-NFT's random-resized crops (tagood.detectors.vlm.crops): the overlapped encoding gives the sequential result."""

from __future__ import annotations

import numpy as np
import pytest

from tagood.detectors.vlm.crops import encode_crops, random_resized_crops


@pytest.fixture(scope="module")
def images(backbone, photos):
    """Ten real preprocessed images: the two sample photos, flipped and shifted."""
    base = [backbone.preprocess(p) for p in photos.values()]
    out = []
    for k in range(10):
        x = base[k % 2]
        out.append(np.ascontiguousarray((x[:, ::-1] if k % 3 else x) + 0.01 * k, dtype=np.float32))
    return out


def test_overlapped_encoding_equals_the_sequential_loop(images, backbone) -> None:
    """Crops cut one chunk ahead in a thread: the same crops, encoded in the same order, as cutting and encoding
    chunk by chunk (10 images in chunks of 4, 4, 2), with the real backbone as the encoder."""
    seen: list[int] = []

    def encode(crops: np.ndarray) -> np.ndarray:
        seen.append(len(crops))
        return backbone.pooled_logits(crops)[0]

    got = encode_crops(iter(images), encode, n_crops=3, seed=7, batch_images=4)
    rng = np.random.default_rng(7)
    want = []
    for a in range(0, len(images), 4):
        chunk = np.stack(images[a : a + 4])
        want.append(backbone.pooled_logits(random_resized_crops(chunk, 3, rng))[0].reshape(len(chunk), 3, -1))
    np.testing.assert_array_equal(got, np.concatenate(want))
    assert got.shape == (10, 3, 1280) and seen == [12, 12, 6]
    assert not np.allclose(got[:, 0], got[:, 1])  # different crops of one image embed differently


def test_errors_reach_the_caller(images) -> None:
    with pytest.raises(ValueError, match="no images"):
        encode_crops(iter([]), lambda c: c.mean(axis=(2, 3)), n_crops=2)

    def broken():
        yield images[0]
        raise OSError("unreadable image 1")

    with pytest.raises(OSError, match="unreadable image 1"):
        encode_crops(broken(), lambda c: c.mean(axis=(2, 3)), n_crops=2, batch_images=1)
