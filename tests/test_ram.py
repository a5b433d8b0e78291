"""RAM / RAM++ tagger on tiny random models saved in the official checkpoint layout and loaded back
through the public loaders. Independent references: transformers' SwinModel for the image encoder,
an explicit BERT cross-attention computation for the tagging head, and the official per-image
loop for RAM++'s description reweighting."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from tagood.backbones.ram import (
    RAMCheckpointError,
    RAMTagger,
    convert_ram,
    load_ram,
    ram_preprocess,
)
from tagood.backbones.ram_swin import SwinConfig, SwinEncoder
from tagood.core.types import Backbone
from tiny_models import (
    TINY_TAGS,
    official_state_dict,
    random_ram,
    tiny_ram_config,
    write_tiny_ram,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory):
    return write_tiny_ram(tmp_path_factory.mktemp("ram"))


@pytest.fixture(scope="module")
def files_plus(tmp_path_factory: pytest.TempPathFactory):
    return write_tiny_ram(tmp_path_factory.mktemp("ramplus"), descriptions=3, seed=5)


@pytest.fixture(scope="module")
def tagger(files) -> RAMTagger:
    return load_ram(files.checkpoint, files.tag_list, files.thresholds, top_k_tags=4, batch_size=2)


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 64)).astype(np.float32)


# -- reference implementations -------------------------------------------------------------------
def _hf_swin_from(mine: SwinEncoder):
    """transformers' SwinModel carrying the same weights (its q/k/v are our qkv split in three)."""
    from transformers import SwinConfig as HFSwinConfig
    from transformers import SwinModel

    c = mine.cfg
    hf = SwinModel(HFSwinConfig(image_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depths=list(c.depths),
                                num_heads=list(c.num_heads), window_size=c.window_size, drop_path_rate=0.0,
                                attn_implementation="eager")).eval()
    sd = mine.state_dict()
    ren = [("embeddings.patch_embeddings.projection", "patch_embed.proj"), ("embeddings.norm", "patch_embed.norm"),
           ("encoder.layers", "layers"), ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
           ("attention.relative_position_bias.relative_position_bias_table", "attn.relative_position_bias_table"),  # v5
           ("attention.self.relative_position_bias_table", "attn.relative_position_bias_table"),  # v4
           ("attention.o_proj", "attn.proj"), ("attention.output.dense", "attn.proj"),
           ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2")]
    new = {}
    for k in hf.state_dict():
        m = k
        for a, b in ren:
            m = m.replace(a, b)
        if m.startswith("layernorm."):
            m = "norm." + m.split(".", 1)[1]
        for i, q in enumerate(("q_proj", "k_proj", "v_proj")):
            m = m.replace(f"attention.self.{('query', 'key', 'value')[i]}", f"attention.{q}")  # v4 names
            if f"attention.{q}" in m:
                w = sd[m.replace(f"attention.{q}", "attn.qkv")]
                d = w.shape[0] // 3
                new[k] = w[i * d : (i + 1) * d]
                break
        else:
            new[k] = sd[m]
    hf.load_state_dict(new, strict=True)
    return hf


def _reference_tag_logits(model, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """BERT cross-attention + FFN layers written out with plain tensor ops."""
    cfg = model.cfg.head
    x = torch.relu(model.label_embed @ model.wordvec_proj.weight.T + model.wordvec_proj.bias)[None].expand(len(tokens), -1, -1)
    probs_all = []
    for lyr in model.tagging_head.encoder.layer:
        ca = lyr.crossattention
        q = x @ ca.self.query.weight.T + ca.self.query.bias
        k = tokens @ ca.self.key.weight.T + ca.self.key.bias
        v = tokens @ ca.self.value.weight.T + ca.self.value.bias
        B, T, H = q.shape
        dh = H // cfg.num_heads
        qh, kh, vh = (t.reshape(B, -1, cfg.num_heads, dh).permute(0, 2, 1, 3) for t in (q, k, v))
        p = torch.softmax(qh @ kh.transpose(-1, -2) / dh**0.5, dim=-1)
        probs_all.append(p)
        ctx = (p @ vh).permute(0, 2, 1, 3).reshape(B, T, H)
        a = torch.nn.functional.layer_norm(ctx @ ca.output.dense.weight.T + ca.output.dense.bias + x, (H,),
                                           ca.output.LayerNorm.weight, ca.output.LayerNorm.bias, eps=cfg.layer_norm_eps)
        f = torch.nn.functional.gelu(a @ lyr.intermediate.dense.weight.T + lyr.intermediate.dense.bias)
        x = torch.nn.functional.layer_norm(f @ lyr.output.dense.weight.T + lyr.output.dense.bias + a, (H,),
                                           lyr.output.LayerNorm.weight, lyr.output.LayerNorm.bias, eps=cfg.layer_norm_eps)
    return (x @ model.fc.weight.T + model.fc.bias).squeeze(-1), probs_all


# -- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("img,window,depths", [(64, 2, (2, 2, 2, 2)), (96, 3, (2, 2, 2, 2)), (128, 4, (1, 2, 2, 2))])
def test_swin_matches_transformers_swin(img: int, window: int, depths: tuple[int, ...]) -> None:
    torch.manual_seed(img)
    mine = SwinEncoder(SwinConfig(img_size=img, patch_size=4, embed_dim=8, depths=depths, num_heads=(1, 2, 2, 4),
                                  window_size=window)).eval()
    with torch.no_grad():
        for p in mine.parameters():
            p.normal_(0, 0.3)
    hf = _hf_swin_from(mine)
    x = torch.randn(2, 3, img, img)
    with torch.no_grad():
        got = mine(x)
        o = hf(pixel_values=x)
    ref = torch.cat([o.pooler_output[:, None], o.last_hidden_state], 1)
    assert got.shape == (2, 1 + (img // 32) ** 2, 64)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_head_matches_explicit_bert_reference(files) -> None:
    model = files.model
    x = torch.from_numpy(_images(2))
    with torch.no_grad():
        tokens = model.image_tokens(x)
        logits, probs = model.tag_logits(tokens, (0, 1))
        ref_logits, ref_probs = _reference_tag_logits(model, tokens)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-4)
    for i in (0, 1):
        torch.testing.assert_close(probs[i], ref_probs[i], atol=1e-6, rtol=1e-5)


def test_loaded_tagger_equals_in_memory_model(files, tagger: RAMTagger, caplog: pytest.LogCaptureFixture) -> None:
    assert isinstance(tagger, Backbone)
    x = _images(3)
    out = tagger.forward(x)  # batch_size 2: two sub-batches
    with torch.no_grad():
        tokens = files.model.image_tokens(torch.from_numpy(x))
        probs = torch.sigmoid(files.model.tag_logits(tokens)[0])
    # sub-batches of 2 vs one batch of 3 take different BLAS kernels: float32 rounding through the Swin stack
    # (3e-6 measured on an Intel Xeon); a wrong weight or layout would differ by orders of magnitude more
    np.testing.assert_allclose(out.tokens, tokens.numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(out.tag_probs, probs.numpy(), atol=1e-5)
    assert out.tokens.shape == (3, 5, 16) and out.features.shape == (3, 16)
    np.testing.assert_array_equal(out.features, out.tokens[:, 0])
    assert out.tag_probs.shape == (3, 20) and out.tag_ids.shape == (3, 4) and out.tag_attention.shape == (3, 4, 5)
    np.testing.assert_array_equal(out.tag_ids, np.argsort(-out.tag_probs, axis=1, kind="stable")[:, :4])
    assert tagger.tag_names == TINY_TAGS
    np.testing.assert_allclose(tagger.tag_thresholds[:2], [0.6, 0.61], atol=1e-6)
    assert out.present() == ["features", "tokens", "tag_probs", "tag_attention", "tag_ids", "block_norms"]
    assert "cross_attention" not in out.extra
    # tag probabilities recomputed from (fp16-cached) tokens
    np.testing.assert_allclose(tagger.tag_probs_from_tokens(out.tokens), out.tag_probs, atol=1e-6)
    np.testing.assert_allclose(tagger.tag_probs_from_tokens(out.tokens.astype(np.float16)), out.tag_probs, atol=2e-2)
    # a bare state dict (no "model" key) loads the same weights
    bare = write_tiny_ram(files.checkpoint.parent / "bare", bare=True)
    with caplog.at_level(logging.INFO):
        t2 = load_ram(bare.checkpoint, bare.tag_list)
    assert t2.weights_hash == tagger.weights_hash
    assert "tag_encoder." in caplog.text and "text_decoder." in caplog.text and "relative_position_index" in caplog.text
    np.testing.assert_allclose(t2.tag_thresholds, 0.68)  # RAM's default without a threshold file
    assert t2.tags_above_threshold(np.full((1, 20), 0.7))[0] == TINY_TAGS


def test_attention_normalisation_and_layers(files) -> None:
    t = load_ram(files.checkpoint, files.tag_list, top_k_tags=5, cross_attention=True, attention_layer=1)
    out = t.forward(_images(2, seed=3))
    ca = out.extra["cross_attention"]  # (B, layers, heads, T, N)
    assert ca.shape == (2, 2, 4, 20, 5) and "cross_attention" in t.outputs
    # each head's softmax row sums to 1 before the heads are summed
    np.testing.assert_allclose(ca.sum(-1), 1.0, atol=1e-5)
    assert (ca >= 0).all()
    # tag_attention = layer-1 maps summed over heads, gathered at the top tags; rows sum to #heads
    full = ca[:, 1].sum(1)
    np.testing.assert_allclose(out.tag_attention, np.take_along_axis(full, out.tag_ids[:, :, None], 1), atol=1e-5)
    np.testing.assert_allclose(out.tag_attention.sum(-1), 4.0, atol=1e-4)
    # recomputing from the tokens gives the same maps, for either layer
    np.testing.assert_allclose(t.attend(out.tokens, out.tag_ids), out.tag_attention, atol=1e-5)
    l0 = t.attend(out.tokens, out.tag_ids, layer=0)
    np.testing.assert_allclose(l0, np.take_along_axis(ca[:, 0].sum(1), out.tag_ids[:, :, None], 1), atol=1e-5)
    assert not np.allclose(l0, out.tag_attention)
    assert load_ram(files.checkpoint, files.tag_list).attention_layer == 0  # default: first layer (public TagOOD code)
    with pytest.raises(ValueError, match="attention_layer"):
        load_ram(files.checkpoint, files.tag_list, attention_layer=2)


@settings(max_examples=15, deadline=None)
@given(layer=st.sampled_from([0, 1]), ids=st.lists(st.integers(0, 19), min_size=1, max_size=6))
def test_attend_any_tag_subset_equals_full_rows(files, layer: int, ids: list[int]) -> None:
    """The head has no self-attention: a tag's map never depends on which other tags are computed."""
    model = files.model
    with torch.no_grad():
        tokens = model.image_tokens(torch.from_numpy(_images(2, seed=7)))
        _, probs = model.tag_logits(tokens, (layer,))
        sub = model.tag_attention(tokens, torch.tensor([ids, ids[::-1]]), layer)
    full = probs[layer].sum(1)
    torch.testing.assert_close(sub[0], full[0, ids], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sub[1], full[1, ids[::-1]], atol=1e-5, rtol=1e-5)


def test_candidate_tags_restrict_top_k(files) -> None:
    cand = [3, 7, 11, 19]
    t = load_ram(files.checkpoint, files.tag_list, top_k_tags=3, candidate_tags=cand)
    out = t.forward(_images(4, seed=1))
    assert set(out.tag_ids.ravel()) <= set(cand)
    sub = out.tag_probs[:, cand]
    np.testing.assert_array_equal(out.tag_ids, np.asarray(cand)[np.argsort(-sub, axis=1, kind="stable")[:, :3]])
    assert t.id != load_ram(files.checkpoint, files.tag_list, top_k_tags=3).id


def test_ram_plus_reweighting_matches_official_loop(files_plus) -> None:
    t = load_ram(files_plus.checkpoint, files_plus.tag_list, top_k_tags=3)
    assert t.cfg.variant == "ram_plus" and t.cfg.descriptions_per_tag == 3 and t.id.startswith("ram_plus")
    m = files_plus.model
    x = torch.from_numpy(_images(2, seed=2))
    with torch.no_grad():
        tokens = m.image_tokens(x)
        cls = tokens[:, 0] / tokens[:, 0].norm(dim=-1, keepdim=True)
        w = torch.softmax((m.reweight_scale.exp() * cls @ m.label_embed.T).view(2, -1, 3), dim=2)
        emb = torch.stack([(w[i].unsqueeze(-1) * m.label_embed.view(-1, 3, 16)).sum(1) for i in range(2)])
        q = torch.relu(m.wordvec_proj(emb))
        states, _ = m.tagging_head(q, tokens)
        ref = torch.sigmoid(m.fc(states).squeeze(-1)).numpy()
    out = t.forward(x.numpy())
    np.testing.assert_allclose(out.tag_probs, ref, atol=1e-6)
    np.testing.assert_allclose(t.attend(out.tokens, out.tag_ids), out.tag_attention, atol=1e-6)


@pytest.mark.parametrize("fp16", [False, True])
def test_convert_round_trip(files, tagger: RAMTagger, tmp_path: Path, fp16: bool) -> None:
    out_dir = convert_ram(files.checkpoint, tmp_path / "conv", files.tag_list, files.thresholds, fp16=fp16)
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "model.safetensors", "tags.txt", "thresholds.txt"]
    meta = json.loads((out_dir / "config.json").read_text())
    assert meta["format"] == "tagood-ram" and meta["dtype"] == ("float16" if fp16 else "float32")
    from safetensors.torch import load_file

    stored = load_file(str(out_dir / "model.safetensors"))
    assert not any(k.startswith(("tag_encoder", "text_decoder")) or k.endswith(("relative_position_index", "attn_mask"))
                   for k in stored)
    t2 = load_ram(out_dir, top_k_tags=4)
    x = _images(3, seed=9)
    a, b = tagger.forward(x), t2.forward(x)
    assert t2.tag_names == TINY_TAGS
    np.testing.assert_array_equal(t2.tag_thresholds, tagger.tag_thresholds)
    if fp16:
        np.testing.assert_allclose(b.tag_probs, a.tag_probs, atol=2e-2)
        assert t2.weights_hash != tagger.weights_hash
        assert (out_dir / "model.safetensors").stat().st_size < 0.6 * sum(v.numel() * 4 for v in stored.values())
    else:
        # same fp32 tensors; BLAS may pick other kernels for memory-mapped vs. allocated weights, so
        # outputs agree to float32 rounding (not necessarily bit for bit)
        for f in ("tokens", "tag_probs", "tag_attention"):
            np.testing.assert_allclose(getattr(b, f), getattr(a, f), rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(b.tag_ids, a.tag_ids)
        assert t2.weights_hash == tagger.weights_hash  # same tensors, same cache key
    with pytest.raises(RAMCheckpointError, match="not empty"):
        convert_ram(files.checkpoint, out_dir, files.tag_list)


def test_convert_ram_plus_round_trip(files_plus, tmp_path: Path) -> None:
    d = convert_ram(files_plus.checkpoint, tmp_path / "c", files_plus.tag_list)
    t1 = load_ram(files_plus.checkpoint, files_plus.tag_list)
    t2 = load_ram(d)
    x = _images(2)
    np.testing.assert_allclose(t1.forward(x).tag_probs, t2.forward(x).tag_probs, rtol=1e-5, atol=1e-6)  # float32 rounding
    assert not (d / "thresholds.txt").exists() and t2.cfg.variant == "ram_plus"


def _save_modified(files, tmp_path: Path, edit) -> Path:
    sd = official_state_dict(files.model)
    edit(sd)
    p = tmp_path / "edited.pth"
    torch.save({"model": sd}, p)
    return p


def test_key_errors_name_the_key(files, tmp_path: Path) -> None:
    p = _save_modified(files, tmp_path, lambda sd: sd.pop("tagging_head.encoder.layer.1.output.dense.bias"))
    with pytest.raises(RAMCheckpointError,
                       match=r"missing key 'tagging_head\.encoder\.layer\.1\.output\.dense\.bias'"):
        load_ram(p, files.tag_list)
    p = _save_modified(files, tmp_path,
                       lambda sd: sd.__setitem__("tagging_head.encoder.layer.0.crossattention.self.extra.weight", torch.zeros(2)))
    with pytest.raises(RAMCheckpointError,
                       match=r"unexpected key 'tagging_head\.encoder\.layer\.0\.crossattention\.self\.extra\.weight'"):
        load_ram(p, files.tag_list)
    p = _save_modified(files, tmp_path, lambda sd: sd.__setitem__("fc.weight", torch.zeros(1, 7)))
    with pytest.raises(RAMCheckpointError,
                       match=r"shape mismatch for 'fc\.weight': file has \(1, 7\), the tagger expects \(1, 32\)"):
        load_ram(p, files.tag_list)
    p = _save_modified(files, tmp_path, lambda sd: sd.pop("label_embed"))
    with pytest.raises(RAMCheckpointError, match="missing key 'label_embed'"):
        load_ram(p, files.tag_list)
    # the self-attention / embeddings RAM deletes from its head are dropped if present, not an error
    p = _save_modified(files, tmp_path,
                       lambda sd: sd.__setitem__("tagging_head.encoder.layer.0.attention.self.query.weight", torch.zeros(3)))
    assert load_ram(p, files.tag_list).weights_hash == load_ram(files.checkpoint, files.tag_list).weights_hash


def test_side_file_and_path_errors(files, tmp_path: Path) -> None:
    short = tmp_path / "tags.txt"
    short.write_text("\n".join(TINY_TAGS[:-1]))
    with pytest.raises(RAMCheckpointError, match="label_embed has 20 tags but the tag list has 19"):
        load_ram(files.checkpoint, short)
    bad_thr = tmp_path / "thr.txt"
    bad_thr.write_text("0.5\n0.6\n")
    with pytest.raises(RAMCheckpointError, match=r"thr\.txt has 2 values but the tag list has 20"):
        load_ram(files.checkpoint, files.tag_list, bad_thr)
    with pytest.raises(RAMCheckpointError, match="tag list"):
        load_ram(files.checkpoint)
    with pytest.raises(RAMCheckpointError, match="does not exist"):
        load_ram(tmp_path / "nope.pth", files.tag_list)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(RAMCheckpointError, match=r"junk\.pth"):
        load_ram(junk, files.tag_list)
    with pytest.raises(RAMCheckpointError, match="config.json"):
        load_ram(tmp_path, files.tag_list)


def test_preprocess_square_and_crop(tagger: RAMTagger) -> None:
    from sklearn.datasets import load_sample_image

    photo = Image.fromarray(load_sample_image("china.jpg"))
    a = tagger.preprocess(photo)
    assert a.shape == (3, 64, 64) and a.dtype == np.float32
    # square resize keeps the whole image: it equals PIL's bilinear resize, normalised
    ref = (np.asarray(photo.resize((64, 64), Image.BILINEAR), np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(a, ref.transpose(2, 0, 1), atol=1e-5)
    c = ram_preprocess(photo, 384, "crop")
    assert c.shape == (3, 384, 384)
    big = np.asarray(photo.resize((392, 392), Image.BILINEAR), np.float32)[4:388, 4:388] / 255
    np.testing.assert_allclose(c, ((big - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1), atol=1e-5)
    gray = tagger.preprocess(photo.convert("L"))
    np.testing.assert_allclose(gray[0] * 0.229 + 0.485, gray[1] * 0.224 + 0.456, atol=1e-5)
    with pytest.raises(ValueError, match="batch"):
        tagger.forward(np.zeros((1, 3, 32, 32), np.float32))
    out = tagger.forward(np.stack([a, tagger.preprocess(photo.rotate(90))]))
    assert np.isfinite(out.tag_probs).all()


def test_tiny_config_is_what_the_file_implies(files) -> None:
    t = load_ram(files.checkpoint, files.tag_list)
    assert t.cfg == tiny_ram_config()  # image size read back from the shifted-window masks
    assert random_ram(tiny_ram_config(), 0).cfg == t.cfg


def test_extraction_pipeline_caches_ram_outputs(tagger: RAMTagger, tmp_path: Path) -> None:
    """The tagger runs through the real extraction pipeline into the feature cache (real image files)."""
    from sklearn.datasets import load_sample_image

    from tagood.data import FolderSource
    from tagood.extract import extract_split

    photo = load_sample_image("flower.jpg")
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(photo[k * 40 : k * 40 + 200, k * 60 : k * 60 + 260]).save(tmp_path / "imgs" / c / f"{k}.jpg")
    src = FolderSource(tmp_path / "imgs", min_size=None)
    r = extract_split(src, tagger, tmp_path / "cache", split="s", batch_size=4, progress=False, workers=1)
    assert len(r) == 6
    direct = tagger.forward(np.stack([tagger.preprocess(src.load(i)) for i in range(6)]))
    np.testing.assert_allclose(r.array("tag_probs"), direct.tag_probs, atol=1e-3)
    np.testing.assert_array_equal(r.array("tag_ids", dtype=np.int64), direct.tag_ids)
    toks = r.tokens("tokens")
    assert toks.dim == 16 and list(toks.lengths) == [5] * 6
