"""Vision-language detectors on synthetic aligned embeddings where the right answer is known,
hand computations of the scores, the batched NFT closed form, WordNet parsing and NegMining."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tagood.detectors as detectors
from tagood.backbones.dual_encoder import DualEncoder
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.images import ImageStream
from tagood.core.types import TokenSet
from tagood.detectors.vlm.krnft import KRNFT
from tagood.detectors.vlm.neglabel import ind_share, random_groups
from tagood.detectors.vlm.negmining import mine_negatives, neg_distance
from tagood.detectors.vlm.nft import NFT, nft_cosine, per_image_cosines
from tagood.detectors.vlm.wordnet import WordNetError, read_index, read_word_list, wordnet_words
from tagood.metrics import ood_metrics

torch.set_num_threads(1)
E = 32
CLASSES = ["alpha", "beta", "gamma", "delta", "epsilon"]


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


class HashEncoder:
    """A deterministic toy dual encoder: every text maps to a fixed random unit vector (seeded by its hash)."""

    id = "hash-encoder"
    weights_hash = "0"
    transform_id = "none"
    embed_dim = E
    logit_scale = 100.0

    def preprocess(self, image):
        return np.zeros((3, 4, 4), np.float32)

    def encode_images(self, batch):
        return unit(np.asarray(batch, np.float32).reshape(len(batch), -1)[:, :E] + 1e-3)

    def encode_texts(self, texts):
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
            out.append(np.random.default_rng(seed).standard_normal(E))
        return unit(np.stack(out))


@pytest.fixture(scope="module")
def world():
    """IND samples near their class prompt; OOD samples near the prompts of unrelated words."""
    enc = HashEncoder()
    rng = np.random.default_rng(0)
    text = enc.encode_texts([f"a photo of a {c}." for c in CLASSES])
    ood_words = [f"thing{i}" for i in range(40)]
    ood_dirs = enc.encode_texts([f"a photo of a {w}." for w in ood_words])

    def ind(n):
        y = rng.integers(0, len(CLASSES), n)
        return unit(text[y] + 0.25 * rng.standard_normal((n, E))), y

    def patches(centres, n_p=6, noise=0.4):
        return TokenSet.from_dense(unit(centres[:, None, :] + noise * rng.standard_normal((len(centres), n_p, E))))

    xtr, ytr = ind(200)
    xte, yte = ind(150)
    xo = unit(ood_dirs[rng.integers(0, len(ood_words), 150)] + 0.25 * rng.standard_normal((150, E)))
    train = FeatureSet(labels=ytr, image_embeds=xtr, patch_embeds=patches(xtr), name="train")
    test = FeatureSet(labels=yte, image_embeds=xte, patch_embeds=patches(xte), name="test")
    ood = FeatureSet(labels=-np.ones(150, np.int64), image_embeds=xo, patch_embeds=patches(xo), name="ood")
    ctx = Context(class_names=CLASSES, dual_encoder=enc)
    return enc, text, train, test, ood, ctx, ood_words


def test_toy_encoder_satisfies_protocol(world) -> None:
    assert isinstance(world[0], DualEncoder)


def test_mcm_equals_hand_computation(world) -> None:
    enc, text, train, test, ood, ctx, _ = world
    det = detectors.create("mcm").fit(train, ctx)
    s = det.score(test)
    x = test.image_embeds[3].astype(np.float64)
    cos = text.astype(np.float64) @ x / np.linalg.norm(x)
    hand = -np.exp(cos).max() / np.exp(cos).sum()  # tau = 1
    assert s[3] == pytest.approx(hand, abs=1e-7)
    assert np.all(s < 0) and np.all(s >= -1)


def test_glmcm_local_term_by_hand(world) -> None:
    enc, text, train, test, ood, ctx, _ = world
    det = detectors.create("glmcm").fit(train, ctx)
    mcm = detectors.create("mcm").fit(train, ctx)
    toks, _ = test.patch_embeds.get(5)
    cos = unit(toks).astype(np.float64) @ text.T.astype(np.float64)
    p = np.exp(cos) / np.exp(cos).sum(1, keepdims=True)
    local = p.max()
    assert det.score(test)[5] == pytest.approx(mcm.score(test)[5] - local, abs=1e-7)


@pytest.mark.parametrize("name,kw", [
    ("mcm", {}),
    ("glmcm", {}),
    ("neglabel", {"corpus": [f"thing{i}" for i in range(40)] + [f"other{i}" for i in range(200)], "n_neg": 120, "ngroup": 4}),
    ("locoop", {"epochs": 5, "shots": 8}),
    ("krnft", {"neg_words": [f"thing{i}" for i in range(40)], "epochs": 3, "shots": 8}),
])
def test_detectors_separate_ind_from_ood(world, name, kw) -> None:
    enc, text, train, test, ood, ctx, _ = world
    if name == "krnft":  # precomputed crop embeddings: crops near the image (IND) or elsewhere (background)
        rng = np.random.default_rng(1)
        n = len(train)
        near = unit(train.image_embeds[:, None, :] + 0.3 * rng.standard_normal((n, 8, E)))
        far = unit(rng.standard_normal((n, 8, E)))
        train = train.with_(extra={"crop_embeds": np.concatenate([near, far], axis=1)})
        kw = {**kw, "n_crops": 16, "k_in": 4, "k_out": 4}
    det = detectors.create(name, **kw).fit(train, ctx)
    si, so = det.score(test), det.score(ood)
    assert si.dtype == np.float64 and np.isfinite(si).all() and np.isfinite(so).all()
    assert ood_metrics(si, so)["auroc"] > 0.9


def test_neglabel_share_by_hand_and_grouping() -> None:
    rng = np.random.default_rng(0)
    x, yi, yn = unit(rng.standard_normal((4, E))), unit(rng.standard_normal((3, E))), unit(rng.standard_normal((10, E)))
    groups = random_groups(10, 2, seed=0)
    assert sorted(np.concatenate(groups).tolist()) == list(range(10))
    got = ind_share(x, yi, yn, tau=0.05, groups=groups)
    ei = np.exp(x.astype(np.float64) @ yi.T / 0.05).sum(1)
    en = np.exp(x.astype(np.float64) @ yn.T / 0.05)
    hand = np.mean([ei / (ei + en[:, g].sum(1)) for g in groups], axis=0)
    np.testing.assert_allclose(got, hand, rtol=1e-6)


def test_negmining_keeps_farthest_candidates() -> None:
    rng = np.random.default_rng(0)
    ind = unit(rng.standard_normal((5, E)))
    near = unit(ind[rng.integers(0, 5, 20)] + 0.1 * rng.standard_normal((20, E)))
    far = unit(-ind.mean(0, keepdims=True) + 0.05 * rng.standard_normal((10, E)))
    cands = np.concatenate([near, far])
    picked = mine_negatives(cands, ind, n=10, eta=0.05)
    assert set(picked.tolist()) == set(range(20, 30))
    d = neg_distance(cands, ind, eta=0.05)
    assert np.all(np.diff(d[picked]) <= 0)


def _random_nft(dim: int, hidden: int, seed: int) -> NFT:
    torch.manual_seed(seed)
    nft = NFT(dim, hidden).double()
    with torch.no_grad():
        for p in nft.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return nft


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 6), k=st.integers(1, 7), m=st.integers(0, 9), seed=st.integers(0, 10_000))
def test_batched_nft_equals_per_image(b: int, k: int, m: int, seed: int) -> None:
    nft = _random_nft(12, 5, seed)
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, 12, generator=g, dtype=torch.float64)
    tp = torch.nn.functional.normalize(torch.randn(k, 12, generator=g, dtype=torch.float64), dim=1)
    tn = torch.nn.functional.normalize(torch.randn(m, 12, generator=g, dtype=torch.float64), dim=1)
    with torch.no_grad():
        batched = nft.cosines(v, tp, tn)
        single = per_image_cosines(nft, v, tp, tn)
        ap, cp, an, cn = nft.factors(v)
        explicit_kr = torch.stack([torch.cat([
            torch.nn.functional.cosine_similarity(ap[i] * tp + cp[i], tp, dim=1),
            torch.nn.functional.cosine_similarity(an[i] * tn + cn[i], tn, dim=1)]) for i in range(b)])
        kr = nft.kr_cosine(v, tp, tn)
    assert batched.shape == (b, k + m)
    torch.testing.assert_close(batched, single, atol=1e-6, rtol=0)
    torch.testing.assert_close(kr, explicit_kr, atol=1e-6, rtol=0)


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 6), k=st.integers(1, 7), m=st.integers(0, 9), seed=st.integers(0, 10_000))
def test_krnft_batched_confidence_equals_per_image_softmax(b: int, k: int, m: int, seed: int) -> None:
    """The scoring path (fused, in place, chunked) == softmax over the per-image tuned rows, summed over IND rows."""
    from tagood.detectors.vlm.krnft import KRNFT

    nft = _random_nft(12, 5, seed).float()
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, 12, generator=g)
    tp = torch.nn.functional.normalize(torch.randn(k, 12, generator=g), dim=1)
    tn = torch.nn.functional.normalize(torch.randn(m, 12, generator=g), dim=1)
    det = KRNFT(score_batch=4)
    det.nft, det.text, det.neg_text, det.logit_scale, det.fitted = nft, tp.numpy(), tn.numpy(), 30.0, True
    with torch.no_grad():
        ref = torch.softmax(30.0 * per_image_cosines(nft, v, tp, tn).double(), dim=1)[:, :k].sum(1).numpy()
    # both sides compute the cosines in float32 (in other orders): a few ulps (6e-8 each) times the logit scale 30
    # reach a few 1e-6 in the probability; over 1,300 drawn cases the largest difference was 1.4e-6
    np.testing.assert_allclose(det.confidence(v.numpy()), ref, atol=5e-6, rtol=0)


def test_row_bank_closed_form_equals_per_image_in_float64() -> None:
    """The scoring algebra (transposed products, fused norm, scale folded into the factor, per-image terms as
    the product's bias) equals the explicit per-image rows exactly (float64: torch.addmm path)."""
    from tagood.detectors.vlm.nft import RowBank

    nft = _random_nft(24, 6, 3)
    g = torch.Generator().manual_seed(3)
    tp = torch.nn.functional.normalize(torch.randn(7, 24, generator=g, dtype=torch.float64), dim=1)
    tn = torch.nn.functional.normalize(torch.randn(50, 24, generator=g, dtype=torch.float64), dim=1)
    v = torch.randn(9, 24, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ap, cp, an, cn = nft.factors(v)
        got = torch.cat([RowBank(tp).scaled_cosines(v, ap, cp, 100.0), RowBank(tn).scaled_cosines(v, an, cn, 100.0)], 1)
        want = 100.0 * per_image_cosines(nft, v, tp, tn)
        assert RowBank(tn).backend == "torch.addmm" and RowBank(tn[:0]).scaled_cosines(v, an, cn, 1.0).shape == (9, 0)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("onednn", [True, False])
def test_krnft_scoring_equals_per_image_at_clip_scale(onednn: bool, monkeypatch) -> None:
    """CLIP-like sizes (E = 512, logit scale 100, 3,100 rows, two chunks): the float32 batched scoring path,
    through oneDNN or torch.addmm, equals the float32 batch-size-1 computation (the public code's) to 1e-6."""
    from tagood.detectors.vlm.krnft import KRNFT
    from tagood.detectors.vlm.nft import RowBank

    if not onednn:
        monkeypatch.setenv("TAGOOD_NO_ONEDNN", "1")
    torch.manual_seed(0)
    nft = NFT(512, 16)
    with torch.no_grad():
        for p in nft.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(0)
    tp = torch.nn.functional.normalize(torch.randn(100, 512, generator=g), dim=1)
    tn = torch.nn.functional.normalize(torch.randn(3000, 512, generator=g), dim=1)
    v = torch.nn.functional.normalize(torch.randn(60, 512, generator=g), dim=1)
    det = KRNFT(score_batch=32)
    det.nft, det.text, det.neg_text, det.logit_scale, det.fitted = nft, tp.numpy(), tn.numpy(), 100.0, True
    backend = RowBank(tn).backend
    assert backend == ("onednn" if onednn and torch.backends.mkldnn.is_available() else "torch.addmm")
    with torch.no_grad():
        single = torch.softmax(100.0 * per_image_cosines(nft, v, tp, tn).double(), dim=1)[:, :100].sum(1).numpy()
    got = det.confidence(v.numpy())
    assert det._banks is not None and det._banks[2].backend == backend
    np.testing.assert_allclose(got, single, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(det.confidence(v.numpy()), got)  # the cached row banks give the same scores


def test_nft_is_identity_and_kr_loss_zero_at_init() -> None:
    torch.manual_seed(0)
    nft = NFT(16, 8)
    v = torch.randn(7, 16)
    tp = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    tn = torch.nn.functional.normalize(torch.randn(9, 16), dim=1)
    with torch.no_grad():
        l_kr = 1.0 - nft.kr_cosine(v, tp, tn).mean()
        plain = torch.nn.functional.normalize(v, dim=1) @ torch.cat([tp, tn]).T
        torch.testing.assert_close(nft.cosines(v, tp, tn), plain, atol=1e-6, rtol=0)
    assert abs(float(l_kr)) < 1e-6
    a, c = torch.ones(7, 16), torch.zeros(7, 16)
    torch.testing.assert_close(nft_cosine(v, tp, a, c), plain[:, :4], atol=1e-6, rtol=0)


def test_krnft_save_load_round_trip(world, tmp_path: Path) -> None:
    enc, text, train, test, ood, ctx, words = world
    rng = np.random.default_rng(2)
    crops = unit(train.image_embeds[:, None, :] + 0.5 * rng.standard_normal((len(train), 6, E)))
    det = KRNFT(neg_words=words[:20], epochs=2, shots=4, n_crops=6, k_in=2, k_out=2)
    det.fit(train.with_(extra={"crop_embeds": crops}), ctx)
    assert det.history and det.history[0]["kr"] >= 0
    back = KRNFT.load(det.save(tmp_path / "m"))  # the old entry point: a wrapper of tagood.detectors.load
    np.testing.assert_array_equal(back.score(test), det.score(test))
    assert back.neg_words == det.neg_words and back.class_names == CLASSES


def test_krnft_declares_its_inputs_and_names_what_is_missing(world) -> None:
    enc, text, train, test, ood, ctx, words = world
    assert KRNFT.requires == {"image_embeds"} and {"image_embeds", "labels"} <= KRNFT.fit_requires
    assert KRNFT.FIT_IMAGES == "images"
    assert "labels" in detectors.create("locoop").fit_requires
    with pytest.raises(ValueError, match=r"needs inputs \['images'\].*train.images.*crop_embeds"):
        KRNFT(neg_words=words[:5], epochs=1).fit(train, ctx)
    with pytest.raises(ValueError, match=r"needs inputs \['images', 'labels'\]"):
        KRNFT(neg_words=words[:5], epochs=1).fit(train.with_(labels=None), ctx)
    crops = np.repeat(train.image_embeds[:, None, :], 2, axis=1)
    with pytest.raises(ValueError, match=r"needs inputs \['labels'\]"):  # precomputed crops stand in for the images
        KRNFT(neg_words=words[:5], epochs=1).fit(train.with_(labels=None, extra={"crop_embeds": crops}), ctx)
    # the pixels alone suffice: crops are cut from train.images and encoded with the dual encoder
    rng = np.random.default_rng(3)
    imgs = rng.standard_normal((len(train), 3, 8, 8)).astype(np.float32)
    det = KRNFT(neg_words=words[:5], epochs=1, shots=2, n_crops=4, k_in=1, k_out=1)
    det.fit(train.with_(images=ImageStream(imgs)), ctx)
    assert det.fitted and np.isfinite(det.score(test)).all()


def test_vlm_detectors_need_dual_encoder_and_names(world) -> None:
    train = world[2]
    with pytest.raises(ValueError, match="dual_encoder"):
        detectors.create("mcm").fit(train, Context(class_names=CLASSES))


def test_wordnet_nouns_and_adjectives() -> None:
    if not Path("/usr/share/wordnet/index.noun").is_file():
        pytest.skip("Debian wordnet-base not installed")
    nouns = wordnet_words(("noun",))
    adjs = wordnet_words(("adj",))
    both = wordnet_words()
    assert len(nouns) > 50_000 and len(adjs) > 10_000
    assert len(both) == len(set(nouns) | set(adjs))
    assert "dog" in nouns and "red" in adjs and all("_" not in w for w in nouns[:1000])


def test_wordnet_and_word_list_errors(tmp_path: Path) -> None:
    bad = tmp_path / "index.noun"
    bad.write_text("this is not wordnet\n")
    with pytest.raises(WordNetError, match="index.noun"):
        read_index(bad)
    with pytest.raises(WordNetError, match="wordnet-base"):
        wordnet_words(root=tmp_path / "nowhere")
    wl = tmp_path / "words.txt"
    wl.write_text("# comment\ncat\n\ndog\ncat\n")
    assert read_word_list(wl) == ["cat", "dog"]
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(WordNetError, match="no labels"):
        read_word_list(tmp_path / "empty.txt")


def test_named_template_lists_in_method_specs() -> None:
    from tagood.backbones.prompts import CLIP_ENSEMBLE_7, DEFAULT_TEMPLATE

    assert detectors.create("mcm[templates=clip7]").templates == list(CLIP_ENSEMBLE_7)
    assert detectors.create("mcm").templates == [DEFAULT_TEMPLATE]
    assert detectors.create("mcm", templates=["a {}.", "art of a {}."]).templates == ["a {}.", "art of a {}."]
    assert detectors.create("glmcm[templates=itap of a {}.]").templates == ["itap of a {}."]
    with pytest.raises(ValueError, match="unknown template list 'foo'.*clip7"):
        detectors.create("mcm[templates=foo]")
