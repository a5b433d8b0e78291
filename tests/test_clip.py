"""CLIP dual encoder and dense tagger on a tiny random Hugging Face CLIP saved to disk and loaded
through the public loaders; references are transformers' own CLIPModel / CLIPImageProcessor."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from tagood.backbones.clip import (
    CLIPDualEncoder,
    CLIPLoadError,
    ClipTransform,
    DualEncoder,
    load_clip,
    load_open_clip,
)
from tagood.backbones.clip_tagger import CLIPDenseTagger, load_clip_tagger
from tagood.core.types import Backbone
from tiny_models import write_tiny_clip

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def enc(clip_dir: Path) -> CLIPDualEncoder:
    e = load_clip(clip_dir, batch_size=2)
    assert isinstance(e, CLIPDualEncoder)
    return e


@pytest.fixture(scope="module")
def hf(clip_dir: Path):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).eval()


def _images(n: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _pooled(x):
    return x.pooler_output if hasattr(x, "pooler_output") else x


def test_protocol_and_logit_scale(enc: CLIPDualEncoder) -> None:
    assert isinstance(enc, DualEncoder)
    assert enc.embed_dim == 16
    assert enc.logit_scale == pytest.approx(100.0, rel=1e-4)
    assert enc.n_patches == 16


def test_image_and_text_embeddings_equal_transformers(enc: CLIPDualEncoder, hf) -> None:
    x = _images(5)
    got = enc.encode_images(x)  # batch_size 2: three sub-batches
    with torch.no_grad():
        ref = torch.nn.functional.normalize(_pooled(hf.get_image_features(pixel_values=torch.from_numpy(x))), dim=-1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    texts = ["a photo of a cat.", "dog", "a photo of a big red fire-truck."]
    got_t = enc.encode_texts(texts)
    tok = enc.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref_t = torch.nn.functional.normalize(_pooled(hf.get_text_features(**tok)), dim=-1).numpy()
    np.testing.assert_allclose(got_t, ref_t, atol=1e-5)
    # padding must not change a text's embedding
    np.testing.assert_allclose(enc.encode_texts(["dog"])[0], got_t[1], atol=1e-5)
    assert enc.encode_texts([]).shape == (0, 16)


def test_prompt_ensemble_averages_normalised_templates(enc: CLIPDualEncoder) -> None:
    templates = ["a photo of a {}.", "a drawing of a {}."]
    got = enc.encode_prompts(["cat", "dog"], templates)
    each = enc.encode_texts(["a photo of a cat.", "a drawing of a cat.", "a photo of a dog.", "a drawing of a dog."])
    ref = each.reshape(2, 2, -1).mean(1)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    with pytest.raises(ValueError, match="placeholder"):
        enc.encode_prompts(["cat"], ["no placeholder"])


def test_patch_tokens_both_paths_match_explicit_reference(enc: CLIPDualEncoder, hf) -> None:
    x = _images(3)
    vm = hf.vision_model
    with torch.no_grad():
        t = torch.from_numpy(x)
        h = vm.pre_layrnorm(vm.embeddings(t))
        for layer in vm.encoder.layers[:-1]:
            h = layer(h, None)
            h = h[0] if isinstance(h, tuple) else h
        out = vm.encoder.layers[-1](h, None)
        out = out[0] if isinstance(out, tuple) else out
        ref_tokens = hf.visual_projection(vm.post_layernorm(out[:, 1:])).numpy()
        last = vm.encoder.layers[-1]
        # MaskCLIP: each token attends only to itself -> v_proj then out_proj, residual and MLP kept
        y = h + last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(h)))
        y = y + last.mlp(last.layer_norm2(y))
        ref_value = hf.visual_projection(vm.post_layernorm(y[:, 1:])).numpy()
    np.testing.assert_allclose(enc.patch_tokens(x, dense="tokens"), ref_tokens, atol=1e-5)
    np.testing.assert_allclose(enc.patch_tokens(x), ref_value, atol=1e-5)
    assert enc.patch_tokens(x).shape == (3, 16, 16)
    nt = enc.patch_tokens(x, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(nt, axis=-1), 1.0, atol=1e-5)
    img, pt = enc.encode_images_and_patches(x)
    np.testing.assert_allclose(img, enc.encode_images(x), atol=1e-6)
    np.testing.assert_allclose(pt, ref_value, atol=1e-5)
    with pytest.raises(ValueError, match="dense"):
        enc.patch_tokens(x, dense="bogus")


def test_save_load_round_trip_equal(enc: CLIPDualEncoder, tmp_path: Path) -> None:
    again = tmp_path / "again"
    enc.model.save_pretrained(str(again))
    enc.tokenizer.save_pretrained(str(again))
    e2 = CLIPDualEncoder.from_pretrained(again)
    x = _images(2, seed=4)
    np.testing.assert_allclose(e2.encode_images(x), enc.encode_images(x), rtol=1e-5, atol=1e-6)  # float32 rounding
    np.testing.assert_allclose(e2.encode_texts(["red car"]), enc.encode_texts(["red car"]), rtol=1e-5, atol=1e-6)
    # no preprocessor_config.json there: CLIP's defaults at the model's resolution
    assert e2.transform == ClipTransform(resize=32, crop=(32, 32))
    assert e2.weights_hash and e2.weights_hash == enc.weights_hash


def test_preprocess_matches_transformers_processor(enc: CLIPDualEncoder) -> None:
    from sklearn.datasets import load_sample_image
    from transformers import CLIPImageProcessor

    assert enc.transform == ClipTransform(resize=32, crop=(32, 32))  # read from preprocessor_config.json
    photo = Image.fromarray(load_sample_image("china.jpg")).crop((0, 0, 600, 400))  # even crop margins
    tr = ClipTransform()
    ours = tr(photo)
    proc = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    ref = proc(images=photo, return_tensors="np")["pixel_values"][0]
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert enc.preprocess(photo.convert("L")).shape == (3, 32, 32)
    assert tr.id != ClipTransform(resize=256).id


def test_loader_errors_are_clear(tmp_path: Path, clip_dir: Path) -> None:
    with pytest.raises(CLIPLoadError, match="config.json"):
        CLIPDualEncoder.from_pretrained(tmp_path)
    with pytest.raises(CLIPLoadError, match="does not exist"):
        load_clip(tmp_path / "nope")
    f = tmp_path / "model.pt"
    f.write_bytes(b"x")
    with pytest.raises(CLIPLoadError, match="architecture"):
        load_clip(f)
    try:
        import open_clip  # noqa: F401
    except ImportError:
        from tagood.errors import MissingDependencyError

        with pytest.raises(MissingDependencyError, match="pip install open_clip_torch"):
            load_open_clip(f, "ViT-B-16")
    # a model folder without its tokenizer
    no_tok = tmp_path / "no-tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((clip_dir / name).read_bytes())
    with pytest.raises(CLIPLoadError, match="tokenizer"):
        CLIPDualEncoder.from_pretrained(no_tok)


def test_dense_tagger(enc: CLIPDualEncoder) -> None:
    vocab = ["cat", "dog", "car", "tree", "house"]
    tagger = CLIPDenseTagger(enc, vocab, templates=["a photo of a {}.", "a {}."], top_k_tags=3)
    assert isinstance(tagger, Backbone)
    x = _images(4, seed=2)
    out = tagger.forward(x)
    assert out.tokens.shape == (4, 17, 16) and out.features.shape == (4, 16)
    assert out.tag_probs.shape == (4, 5) and out.tag_ids.shape == (4, 3) and out.tag_attention.shape == (4, 3, 17)
    np.testing.assert_allclose(out.tag_probs.sum(1), 1.0, atol=1e-5)
    text = enc.encode_prompts(vocab, ["a photo of a {}.", "a {}."])
    logits = 100.0 * out.features @ text.T
    ref = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(out.tag_probs, ref / ref.sum(1, keepdims=True), atol=1e-4)
    # ids are the top-3 by probability, descending
    np.testing.assert_array_equal(out.tag_ids, np.argsort(-out.tag_probs, axis=1, kind="stable")[:, :3])
    # attention = cosine of each token with the tag text; token 0 is the image embedding
    tok_n = out.tokens / np.linalg.norm(out.tokens, axis=-1, keepdims=True)
    ref_att = np.einsum("bke,bne->bkn", text[out.tag_ids], tok_n)
    np.testing.assert_allclose(out.tag_attention, ref_att, atol=1e-5)
    np.testing.assert_allclose(out.tokens[:, 0], out.features, atol=1e-6)
    np.testing.assert_allclose(out.extra["image_embeds"], out.features)
    np.testing.assert_allclose(tagger.attend(out.tokens, out.tag_ids), out.tag_attention, atol=1e-6)
    other = CLIPDenseTagger(enc, vocab[:4])
    assert other.id != tagger.id and other.weights_hash == tagger.weights_hash


def test_load_clip_tagger_vocab_sources(clip_dir: Path, tmp_path: Path) -> None:
    vf = tmp_path / "vocab.txt"
    vf.write_text("cat\ndog\n\nbird\n", encoding="utf-8")
    t = load_clip_tagger(clip_dir, vocabulary=vf, top_k_tags=2)
    assert t.tag_names == ["cat", "dog", "bird"]
    t2 = load_clip_tagger(clip_dir, top_k_tags=5)
    assert len(t2.tag_names) == 1000  # packaged ImageNet-1K class names
    with pytest.raises(CLIPLoadError, match="vocabulary"):
        load_clip_tagger(clip_dir, vocabulary=tmp_path / "missing.txt")
