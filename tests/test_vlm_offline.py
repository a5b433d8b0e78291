"""The offline dual encoder (real EfficientNet-Lite0 + real MiniLM) on real Fashion-MNIST images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import tagood.detectors as detectors
from tagood.backbones.dual_encoder import DualEncoder
from tagood.backbones.prompts import encode_prompts
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet

torch.set_num_threads(1)
FM_DIR = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not (FM_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def offline(backbone, tagood_home):
    from tagood.backbones.offline import OfflineDualEncoder

    return OfflineDualEncoder(backbone=backbone)


@pytest.fixture(scope="module")
def fm_test(backbone):
    from tagood.data.arrays import fashion_mnist

    src = fashion_mnist("test")
    idx = np.random.default_rng(0).choice(np.flatnonzero(src.labels < 6), 600, replace=False)
    x = np.stack([backbone.preprocess(src.load(int(i))) for i in idx])
    return src, idx, x, src.labels[idx], backbone.forward(x)


def test_protocol_and_cached_bridge(offline, tagood_home) -> None:
    from tagood.backbones.offline import OfflineDualEncoder

    assert isinstance(offline, DualEncoder)
    assert offline.cache_path().is_file() and str(offline.cache_path()).startswith(str(tagood_home))
    again = OfflineDualEncoder(backbone=offline.backbone, mode="ridge")  # same bridge file, other construction
    np.testing.assert_array_equal(again.class_text, offline.class_text)
    assert again.weights_hash != offline.weights_hash
    t = offline.encode_texts(["a photo of a dog.", "a photo of a cat."])
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)


def test_zero_shot_accuracy_above_chance(offline, fm_test) -> None:
    """Measured on these 600 IND test images (chance 1/6 = 16.7%): posterior bridge with the single prompt
    25.0%, with CLIP's 7-template ensemble 33.8%; ridge bridge 17.2% (single prompt)."""
    from tagood.backbones.prompts import CLIP_ENSEMBLE_7

    src, idx, x, y, out = fm_test
    img = offline.embed_features(out.features, out.logits)
    single = float(((img @ encode_prompts(offline, src.class_names[:6]).T).argmax(1) == y).mean())
    ensemble = float(((img @ encode_prompts(offline, src.class_names[:6], CLIP_ENSEMBLE_7).T).argmax(1) == y).mean())
    print(f"zero-shot accuracy: single prompt {single:.3f}, clip7 ensemble {ensemble:.3f}")
    assert single > 0.21 and ensemble > 0.29 and ensemble > single


def test_attach_uses_cached_features_and_matches_encode(offline, fm_test) -> None:
    src, idx, x, y, out = fm_test
    from tagood.core.types import TokenSet

    fs = FeatureSet(labels=y[:8], features=out.features[:8], tokens=TokenSet.from_dense(out.tokens[:8]),
                    paths=[src.samples[int(i)].ident for i in idx[:8]], name="fm")
    offline.attach(fs, src)
    img, pt = offline.encode_images_and_patches(x[:8])
    np.testing.assert_allclose(fs.image_embeds, img, atol=1e-5)
    np.testing.assert_allclose(fs.patch_embeds.values.reshape(8, 49, -1), pt, atol=1e-5)
    np.testing.assert_allclose(next(fs.images.batches(8)), x[:8], atol=1e-6)


def test_minilm_context_prompt_reproduces_text(offline) -> None:
    ctx = offline.text.word_embeddings("a photo of a")
    with torch.no_grad():
        e = offline.encode_with_context(ctx, ["dog", "sandal"]).numpy()
    np.testing.assert_allclose(e, offline.encode_texts(["a photo of a dog", "a photo of a sandal"]), atol=1e-5)


def test_locoop_learns_token_context_on_offline_encoder(offline, fm_test) -> None:
    src, idx, x, y, out = fm_test
    from tagood.core.types import TokenSet

    fs = FeatureSet(labels=y[:96], image_embeds=offline.embed_features(out.features[:96], out.logits[:96]),
                    patch_embeds=TokenSet.from_dense(offline.embed_tokens(out.tokens[:96])), name="fm")
    ctx = Context(class_names=src.class_names[:6], dual_encoder=offline)
    det = detectors.create("locoop", epochs=2, shots=8, n_ctx=4).fit(fs, ctx)
    assert det.context_used == "tokens" and len(det.history) == 2
    s = det.score(fs)
    assert s.shape == (96,) and np.isfinite(s).all()


def test_minilm_length_sorted_batches_keep_order_and_values(offline) -> None:
    """MiniLM encodes texts in batches of similar length: the rows come back in input order and equal each text
    encoded alone (padding is masked), and the order of a text in the list does not change its embedding."""
    enc = offline.text
    texts = ["a photo of a cat.", "a photo of a very small and extremely fluffy grey kitten asleep on a sofa.", "dog",
             "a photo of a hippopotamus.", "an aerial photograph of the harbour of Rotterdam at night, in the rain."]
    small = type(enc).__new__(type(enc))
    small.__dict__.update(enc.__dict__)
    small.batch_size = 2  # several batches, each of similar lengths
    got = small.encode(texts)
    alone = np.concatenate([enc.encode([t]) for t in texts])
    np.testing.assert_allclose(got, alone, atol=2e-6)
    assert np.abs(got[0] - got[1]).max() > 1e-2  # distinct texts, distinct rows: a mix-up would fail above
    np.testing.assert_allclose(small.encode(texts[::-1])[::-1], got, atol=2e-6)
