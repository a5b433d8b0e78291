"""ODIN and FeatureNorm on RAM and CLIP taggers (TagOOD paper, Table 1), with tiny random models saved in
the official layouts and loaded through the real loaders (tests/tiny_models.py).

* ``block_norms``: FeatureNorm (Yu et al., CVPR 2023) of every Swin block / ViT block, checked
  against independent references (forward hooks on the Swin blocks; transformers' own
  ``output_hidden_states`` for CLIP).
* ``torch_module()``: the differentiable images -> ``features`` path equals the cached features, and
  ODIN through it (with the IND head) equals a perturbation computed here by autograd, with the
  per-channel pixel std the module declares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tagood.detectors as detectors
from tagood.backbones.clip_tagger import load_clip_tagger
from tagood.backbones.ram import IMAGENET_STD, load_ram
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.images import ImageStream
from tiny_models import write_tiny_clip, write_tiny_ram

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ram(tmp_path_factory: pytest.TempPathFactory):
    f = write_tiny_ram(tmp_path_factory.mktemp("ram"))
    return load_ram(f.checkpoint, f.tag_list, f.thresholds, top_k_tags=4, batch_size=2)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def clip(clip_dir: Path):
    return load_clip_tagger(clip_dir, vocabulary=["cat", "dog", "car", "tree", "house"], top_k_tags=3)


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _jigsaw(img: np.ndarray, seed: int, grid: int = 2) -> np.ndarray:
    """The image's grid x grid tiles in a random non-identity order (FeatureNorm's pseudo-OOD)."""
    c, h, w = img.shape
    th, tw = h // grid, w // grid
    tiles = [img[:, r * th : (r + 1) * th, q * tw : (q + 1) * tw] for r in range(grid) for q in range(grid)]
    perm = np.roll(np.arange(grid * grid), 1 + seed % (grid * grid - 1))
    rows = [np.concatenate([tiles[perm[r * grid + q]] for q in range(grid)], 2) for r in range(grid)]
    return np.concatenate(rows, 1)


def _ref_norm(h: np.ndarray) -> np.ndarray:
    """FeatureNorm of tokens (B,L,C): per channel the L2 norm over L of ReLU(h), mean over C (float64)."""
    return np.sqrt((np.maximum(h.astype(np.float64), 0) ** 2).sum(1)).mean(1)


def test_ram_block_norms_equal_hooked_swin_blocks(ram) -> None:
    assert "block_norms" in ram.outputs
    x = _images(3, 64, seed=1)
    outs: list[np.ndarray] = []
    hooks = [blk.register_forward_hook(lambda m, i, o: outs.append(o.detach().numpy()))
             for stage in ram.model.visual_encoder.layers for blk in stage.blocks]
    try:
        with torch.no_grad():
            ram.model.visual_encoder(torch.as_tensor(x))
    finally:
        for h in hooks:
            h.remove()
    n_blocks = sum(ram.cfg.swin.depths)
    assert len(outs) == n_blocks == ram.model.visual_encoder.n_blocks == 8
    want = np.stack([_ref_norm(o) for o in outs], 1)
    got = ram.forward(x).block_norms
    assert got.shape == (3, n_blocks)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.ptp(got, axis=0).max() > 0  # the norms differ between images


def test_clip_block_norms_equal_transformers_hidden_states(clip, clip_dir: Path) -> None:
    from transformers import CLIPModel

    hf = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).eval()
    x = _images(3, 32, seed=2)
    with torch.no_grad():
        hs = hf.vision_model(pixel_values=torch.as_tensor(x), output_hidden_states=True).hidden_states
    want = np.stack([_ref_norm(h[:, 1:].numpy()) for h in hs[1:]], 1)  # block outputs, patch tokens only
    out = clip.forward(x)
    assert "block_norms" in clip.outputs and out.block_norms.shape == (3, len(hs) - 1)
    np.testing.assert_allclose(out.block_norms, want, rtol=1e-4)


@pytest.mark.parametrize("kind", ["ram", "clip"])
def test_torch_module_equals_features_and_odin_through_it(kind: str, ram, clip) -> None:
    tagger, size = (ram, 64) if kind == "ram" else (clip, 32)
    x = _images(4, size, seed=3)
    feat = tagger.torch_module()
    with torch.no_grad():
        f = feat(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(f, tagger.forward(x).features, rtol=1e-4, atol=1e-5)
    want_std = tuple(float(v) for v in IMAGENET_STD) if kind == "ram" else tuple(float(v) for v in clip.encoder.transform.std)
    assert feat.pixel_std == pytest.approx(want_std)
    # an IND head on the features, as the benchmark runner builds it
    torch.manual_seed(0)
    head = torch.nn.Linear(f.shape[1], 3)
    with torch.no_grad():
        head.weight.mul_(20.0)
    model = torch.nn.Sequential(feat, head).eval()
    det = detectors.create("odin", temperature=10.0, epsilon=0.01).fit(FeatureSet(), Context(model=model))
    got = det.score(FeatureSet(images=ImageStream(x)))
    # by hand: gradient by autograd, then a step of eps / std_c on channel c against its sign
    xt = torch.as_tensor(x).requires_grad_(True)
    z = model(xt) / 10.0
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z, z.argmax(1)), xt)
    step = torch.tensor([0.01 / s for s in want_std]).view(1, 3, 1, 1)
    with torch.no_grad():
        p = torch.softmax(model(xt.detach() - step * torch.sign(g)).double() / 10.0, 1)
        plain = torch.softmax(model(xt.detach()).double() / 10.0, 1).max(1).values.numpy()
    np.testing.assert_allclose(got, -p.max(1).values.numpy(), rtol=1e-6, atol=1e-9)
    assert np.all(got < -plain)  # the perturbation raises the max softmax, as ODIN intends


@pytest.mark.parametrize("kind", ["ram", "clip"])
def test_featurenorm_selects_block_on_jigsaw_and_scores_negative_norm(kind: str, ram, clip) -> None:
    tagger, size = (ram, 64) if kind == "ram" else (clip, 32)
    x = _images(6, size, seed=4)
    shuffled = np.stack([_jigsaw(img, i) for i, img in enumerate(x)])
    train = FeatureSet(block_norms=tagger.forward(x).block_norms)
    pseudo = FeatureSet(block_norms=tagger.forward(shuffled).block_norms)
    det = detectors.create("featurenorm").fit(train, Context(pseudo_ood=pseudo))
    ratio = train.block_norms.mean(0) / pseudo.block_norms.mean(0)
    assert det.selected == int(np.argmax(ratio))
    test = FeatureSet(block_norms=tagger.forward(_images(3, size, seed=5)).block_norms)
    np.testing.assert_allclose(det.score(test), -test.block_norms[:, det.selected].astype(np.float64))
