"""Every vision-language detector end to end on a tiny random CLIP saved to disk and loaded through
``tagood.backbones.factory.build_dual_encoder`` (Hugging Face layout), on real image files decoded from an ArraySource."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tagood.detectors as detectors
from tagood.backbones.dual_encoder import DualEncoder, EncoderAdapter
from tagood.backbones.factory import build_dual_encoder
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.data.arrays import ArraySource
from tiny_models import write_tiny_clip

torch.set_num_threads(1)
NAMES = ["dog", "cat", "car"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny")
    enc = build_dual_encoder({"name": "clip", "path": str(d), "batch_size": 8})
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 6)
    imgs = (rng.integers(0, 255, (len(y), 40, 40, 3)) // (y[:, None, None, None] + 1)).astype(np.uint8)
    src = ArraySource(imgs, y, "toy", class_names=NAMES)
    fs = FeatureSet(labels=y, paths=[s.ident for s in src.samples], name="toy")
    enc.attach(fs, src)
    return enc, src, fs


def test_adapter_attaches_normalised_embeddings(setup) -> None:
    enc, src, fs = setup
    assert isinstance(enc, EncoderAdapter) and isinstance(enc, DualEncoder) and enc.id.startswith("clip")
    assert fs.image_embeds.shape == (18, enc.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(fs.image_embeds, axis=1), 1, atol=1e-5)
    assert len(fs.patch_embeds) == 18 and fs.patch_embeds.lengths[0] == enc.n_patches
    np.testing.assert_allclose(fs.image_embeds[:4], enc.encode_images(next(fs.images.batches(4))), atol=1e-5)


@pytest.mark.parametrize("name,kw", [
    ("mcm", {}),
    ("glmcm", {}),
    ("neglabel", {"corpus": ["tree", "house", "boat", "cup", "book", "horse"], "n_neg": 4, "ngroup": 2}),
    ("locoop", {"epochs": 2, "shots": 3}),
    ("krnft", {"neg_words": ["tree", "house", "boat"], "epochs": 2, "shots": 2, "n_crops": 4, "k_in": 2, "k_out": 1}),
])
def test_detectors_on_tiny_clip(setup, name, kw) -> None:
    enc, src, fs = setup
    det = detectors.create(name, **kw).fit(fs, Context(class_names=NAMES, dual_encoder=enc))
    s = det.score(fs)
    assert s.shape == (18,) and s.dtype == np.float64 and np.isfinite(s).all()
    if name == "locoop":
        assert det.context_used == "residual"


def test_unknown_dual_encoder_spec_is_clear() -> None:
    with pytest.raises(ValueError, match="offline"):
        build_dual_encoder({"name": "nope"})
    with pytest.raises(ValueError, match="path"):
        build_dual_encoder({"name": "clip"})
