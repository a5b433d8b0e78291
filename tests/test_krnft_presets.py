"""KR-NFT's ``paper`` / ``official`` presets, each rule checked against the published formulas (the public code
github.com/ZhuWenjie98/KRNFT at 86cdbbd6; the file:line of each rule is in docs/methods/krnft.md), with
hand-made inputs whose answers are worked out here, not by the code under test."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.detectors import create
from tagood.detectors.vlm.crops import encode_view_crops
from tagood.detectors.vlm.krnft import KRNFT
from tagood.detectors.vlm.krnft_train import (
    conditioned_logits,
    epoch_plan,
    group_columns,
    grouped_logits,
    kr_loss,
    loss_in,
    loss_out,
    script_hidden,
)
from tagood.detectors.vlm.negmining import mine_by_position, negative_labels_by_position, position_similarity
from tagood.detectors.vlm.nft import NFT, nft_self_cosine

torch.set_num_threads(1)


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


# -- width -------------------------------------------------------------------------------------------
def test_width_formula_and_parameter_count() -> None:
    # Linear(512, 512 // int(512 / meta_dim)): the script's meta_dim 64 -> 64, the config file's 8 -> 8
    assert script_hidden(512, 64) == 64 and script_hidden(512, 8) == 8 and script_hidden(512, 100) == 102
    assert script_hidden(384, 64) == 48  # the offline encoder's E = 384
    o = create("krnft[preset=paper]").options
    assert o.meta_dim == 64 and create("krnft").options.meta_dim is None
    nft = NFT(512, script_hidden(512, o.meta_dim))
    # four meta-networks 512-64-512 (weights + biases) and four 512-vectors: 266,496 parameters
    assert sum(p.numel() for p in nft.parameters()) == 4 * (512 * 64 + 64 + 64 * 512 + 512) + 4 * 512 == 266_496


# -- mining ------------------------------------------------------------------------------------------
def _candidates(stats: list[float], k: int, rng: np.random.Generator) -> np.ndarray:
    """Unit candidates over K orthonormal IND labels whose sorted cosines have ``stat`` at the second-largest
    place (position int(0.95 * 40) = 38 of 0..39) and ``stat + 0.2`` at the largest."""
    rows = []
    for s in stats:
        a = rng.uniform(-0.05, 0.05, k)
        a[rng.permutation(k)[:2]] = [s, s + 0.2]
        rows.append(np.append(a, math.sqrt(1 - float(a @ a))))
    return np.asarray(rows, np.float32)


def test_mining_by_position_on_a_hand_made_similarity_matrix() -> None:
    k = 40
    assert int(k * 0.95) == 38
    ind = np.eye(k, k + 1, dtype=np.float32)  # IND label r = basis vector r; cos(candidate, label r) = its r-th entry
    rng = np.random.default_rng(0)
    noun_stats = [0.30, 0.08, 0.20, 0.12, 0.25, 0.16]
    adj_stats = [0.20, 0.10, 0.30]
    nouns, adjs = _candidates(noun_stats, k, rng), _candidates(adj_stats, k, rng)
    np.testing.assert_allclose(position_similarity(nouns, ind), noun_stats, atol=1e-6)  # the 2nd largest, not the max
    # n = 4: int(4 * 3 / 9) = 1 adjective, 3 nouns; the least similar of each pool, least first
    ia, inn = mine_by_position(nouns, adjs, ind, n=4)
    assert ia.tolist() == [1] and inn.tolist() == [1, 3, 5]
    # NegLabel's interpolated 0.95-quantile sits at 0.95 * 39 = 37.05 of 0..39: between the 3rd-largest (a small
    # random entry) and the 2nd-largest, mostly the former -- another statistic, so the position rule is no quantile
    s = np.sort(nouns @ ind.T, axis=1)
    q = np.quantile(nouns @ ind.T, 0.95, axis=1)
    np.testing.assert_allclose(q, s[:, 37] + 0.05 * (s[:, 38] - s[:, 37]), atol=1e-6)
    assert np.all(np.abs(q - np.asarray(noun_stats)) > 0.02)


class RecordingEncoder:
    """Texts -> fixed random unit vectors (seeded by the text); records every text it encodes."""

    id = "recording"
    weights_hash = "0"
    transform_id = "none"
    embed_dim = 16
    logit_scale = 100.0

    def __init__(self) -> None:
        self.seen: list[str] = []

    def preprocess(self, image):
        return np.zeros((3, 4, 4), np.float32)

    def encode_images(self, batch):
        raise AssertionError("crops are precomputed here")

    def encode_texts(self, texts):
        self.seen += list(texts)
        return unit(np.stack([np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little"))
                              .standard_normal(self.embed_dim) for t in texts]))


def test_prompt_set_of_the_presets(tmp_path, monkeypatch) -> None:
    """IND labels and noun negatives 'the nice {}.', adjective negatives 'This is a {} photo.', crops ranked by
    'a photo of a {}.' (clip_krnft.py:421-422, 543; krnft_trainer.py:184)."""
    from tagood.detectors.vlm import negmining

    monkeypatch.setattr(negmining, "split_pool", lambda names, corpus, m, seed: (["tree", "house", "boat", "cloud"],
                                                                                  ["green", "tall"]))
    enc = RecordingEncoder()
    words, emb = negative_labels_by_position(enc, ["cat"], enc.encode_texts(["the nice cat."]), n=3, cache_dir=tmp_path)
    assert {"the nice tree.", "the nice house.", "the nice boat.", "the nice cloud.", "This is a green photo.",
            "This is a tall photo."} <= set(enc.seen)
    assert len(words) == 3 and words[0] in {"green", "tall"} and set(words[1:]) <= {"tree", "house", "boat", "cloud"}
    np.testing.assert_allclose(emb[0], enc.encode_texts([f"This is a {words[0]} photo."])[0], atol=1e-6)
    o = create("krnft[preset=paper]").options
    assert (o.template, o.adj_template, o.select_template, o.n_neg, o.mining) == (
        "the nice {}.", "This is a {} photo.", "a photo of a {}.", 10500, "position")
    d = create("krnft").options
    assert (d.template, d.n_neg, d.mining, d.adj_template) == ("a photo of a {}.", 10000, "quantile", None)


def test_real_wordnet_split_keeps_a_word_that_is_both_as_a_noun() -> None:
    from pathlib import Path

    if not Path("/usr/share/wordnet/index.noun").is_file():
        pytest.skip("Debian wordnet-base not installed")
    from tagood.detectors.vlm.negmining import split_pool

    nouns, adjs = split_pool(["cat"], None, None, 0)
    assert "red" in nouns and "red" not in adjs and "cat" not in nouns and len(adjs) > 1000
    assert not {w.lower() for w in nouns} & {w.lower() for w in adjs}


# -- grouping and losses ------------------------------------------------------------------------------
def test_grouping_into_ten() -> None:
    g = group_columns(25, 10, seed=3)
    assert g.shape == (10, 2) and sorted(g.flatten().tolist()) == list(range(20))  # the last 25 mod 10 = 5 dropped
    assert torch.equal(g, group_columns(25, 10, seed=3))  # fixed: the same groups at every step
    assert group_columns(7, 1, seed=0).tolist() == [list(range(7))]
    z = torch.arange(2 * 7, dtype=torch.float32).reshape(2, 7)  # K = 2 IND columns then 5 negatives
    groups = torch.tensor([[4, 0], [1, 3]])
    out = grouped_logits(z, 2, groups)
    assert out.shape == (2, 2, 4)
    assert out[1, 0].tolist() == [7, 8, 13, 9] and out[1, 1].tolist() == [7, 8, 10, 12]


def test_losses_on_hand_computed_inputs() -> None:
    # one view, K = 2 IND rows, 4 negatives in 2 groups {0,1}, {2,3}; label 0
    z = torch.tensor([[2.0, 0.0, 1.0, -1.0, 0.5, 3.0]])
    groups = torch.tensor([[0, 1], [2, 3]])
    g1, g2 = [2.0, 0.0, 1.0, -1.0], [2.0, 0.0, 0.5, 3.0]
    lse = lambda xs: math.log(sum(math.exp(x) for x in xs))  # noqa: E731
    # L_in = mean over groups of -log softmax_label
    want_in = ((lse(g1) - 2.0) + (lse(g2) - 2.0)) / 2
    assert loss_in(z, torch.tensor([0]), 2, groups).item() == pytest.approx(want_in, rel=1e-6)
    # script L_out = mean over groups of log(p_IND + 1e-16), p_IND = the two IND columns' share
    p1 = (math.exp(2) + 1) / sum(math.exp(x) for x in g1)
    p2 = (math.exp(2) + 1) / sum(math.exp(x) for x in g2)
    assert loss_out(z, 2, groups, "script").item() == pytest.approx((math.log(p1) + math.log(p2)) / 2, rel=1e-6)
    assert loss_out(z, 2, groups, "bounded").item() == pytest.approx(-(math.log(1 - p1) + math.log(1 - p2)) / 2, rel=1e-5)
    # ungrouped: plain cross-entropy over all six columns
    all_groups = torch.arange(4)[None]
    assert loss_in(z, torch.tensor([0]), 2, all_groups).item() == pytest.approx(
        lse([2.0, 0.0, 1.0, -1.0, 0.5, 3.0]) - 2.0, rel=1e-6)


def _random_nft(dim: int, hidden: int, seed: int) -> NFT:
    torch.manual_seed(seed)
    nft = NFT(dim, hidden)
    with torch.no_grad():
        for p in nft.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return nft


def test_every_crop_is_tuned_by_its_images_top1_crop() -> None:
    e, k, m = 8, 3, 5
    g = torch.Generator().manual_seed(1)
    tp = torch.nn.functional.normalize(torch.randn(k, e, generator=g), dim=1)
    tn = torch.nn.functional.normalize(torch.randn(m, e, generator=g), dim=1)
    top1 = torch.nn.functional.normalize(torch.randn(2, e, generator=g), dim=1)  # two images' top-1 crops
    views = torch.nn.functional.normalize(torch.randn(5, e, generator=g), dim=1)
    owner = torch.tensor([0, 0, 1, 1, 1])
    nft = _random_nft(e, 4, 0)
    got = conditioned_logits(nft, views, top1, owner, tp, tn, 50.0)
    for j in range(5):  # by hand: the rows tuned once from the owner's top-1 crop, then cosines to the view
        rows = nft.tuned_rows(top1[owner[j]], tp, tn)
        torch.testing.assert_close(got[j], 50.0 * rows @ views[j], rtol=1e-5, atol=1e-4)
    # the knowledge term: 1 - mean over the two conditionings and all K + M rows of cos(t', t)
    want = 1 - torch.stack([torch.nn.functional.cosine_similarity(nft.tuned_rows(c, tp, tn), torch.cat([tp, tn]))
                            for c in top1]).mean()
    torch.testing.assert_close(kr_loss(nft, top1, tp, tn), want, rtol=1e-5, atol=1e-6)
    ap, cp, _, _ = nft.factors(top1)
    assert nft_self_cosine(tp, ap, cp).shape == (2, k)


# -- schedule ---------------------------------------------------------------------------------------
def test_official_schedule_repeats_epochs_and_takes_a_tenth() -> None:
    off = epoch_plan(40, 3, 1, 0.1, seed_reset=True, seed=0, redraw=True)
    assert [len(e.order) for e in off] == [4, 4, 4]  # int(40 steps / 10)
    assert np.array_equal(off[1].order, off[2].order) and off[1].crop_set == off[2].crop_set == 1
    assert off[0].crop_set == 0 and not np.array_equal(off[0].order, off[1].order)
    paper = epoch_plan(40, 3, 1, 1.0, seed_reset=False, seed=0, redraw=True)
    assert [len(e.order) for e in paper] == [40] * 3 and [e.crop_set for e in paper] == [0, 1, 2]
    assert all(sorted(e.order.tolist()) == list(range(40)) for e in paper)
    assert not np.array_equal(paper[1].order, paper[2].order)
    o = create("krnft[preset=official]").options
    p = create("krnft[preset=paper]").options
    assert (o.epoch_fraction, o.seed_reset, o.half_meta) == (0.1, True, True)
    assert (p.epoch_fraction, p.seed_reset, p.half_meta) == (1.0, False, False)
    assert (p.weight_decay, p.lr_schedule, p.lr, p.epochs, p.batch_images) == (0.01, "constant", 1e-5, 3, 1)
    assert create("krnft[preset=paper,n_crops=16]").options.n_crops == 16  # a given option wins over the preset


# -- crops of the original picture --------------------------------------------------------------------
class HalfSource:
    """One 64 x 64 picture: left half black, right half white."""

    def load(self, i: int) -> Image.Image:
        a = np.zeros((64, 64, 3), np.uint8)
        a[:, 32:] = 255
        return Image.fromarray(a)


class HalfStream:
    source = HalfSource()
    indices = np.array([0, 0])

    @staticmethod
    def preprocess(img: Image.Image) -> np.ndarray:  # the encoder's preprocessing: 16 x 16, scaled to [0, 1]
        return np.asarray(img.resize((16, 16), Image.Resampling.BILINEAR), np.float32).transpose(2, 0, 1) / 255.0


def test_crops_are_cut_from_the_original_and_flipped_half_the_time() -> None:
    left_mean = lambda x: x[:, 0, :, :8].mean(axis=(1, 2))[:, None]  # noqa: E731  (N,1): 0 as is, 1 mirrored
    full = (1.0, 1.0)  # whole-picture boxes: the only randomness left is the mirror
    flipped = encode_view_crops(HalfStream(), [(0, (0, 0, 0))], left_mean, 64, flip=True, scale=full)[0, :, 0]
    assert flipped.shape == (64,) and np.all((flipped < 0.1) | (flipped > 0.9))  # bilinear blurs the edge only
    assert 16 < int((flipped > 0.5).sum()) < 48
    plain = encode_view_crops(HalfStream(), [(0, (0, 0, 0))], left_mean, 64, flip=False, scale=full)[0, :, 0]
    assert np.all(plain < 0.1)
    # the seed alone fixes an item's crops; the views are the preprocessing's 16 x 16
    shapes = []
    enc = lambda x: (shapes.append(x.shape), x.reshape(len(x), -1)[:, :4])[1]  # noqa: E731
    a = encode_view_crops(HalfStream(), [(0, (0, 1, 0)), (1, (0, 2, 1))], enc, 8)
    b = encode_view_crops(HalfStream(), [(1, (0, 2, 1))], enc, 8)
    np.testing.assert_array_equal(a[1], b[0])
    assert shapes[0][1:] == (3, 16, 16)


# -- L2 normalisation of the library API ----------------------------------------------------------------
def test_confidence_normalises_the_image_feature_itself() -> None:
    enc = RecordingEncoder()
    rng = np.random.default_rng(0)
    classes = ["alpha", "beta", "gamma"]
    x = unit(rng.standard_normal((24, 16)))
    train = FeatureSet(name="train", image_embeds=x, labels=np.repeat(np.arange(3), 8),
                       extra={"crop_embeds": unit(x[:, None, :] + 0.3 * rng.standard_normal((24, 6, 16)))})
    det = KRNFT(neg_words=[f"w{i}" for i in range(30)], epochs=1, shots=8, n_crops=6, k_in=2, k_out=2, preset="paper")
    det.fit(train, Context(dual_encoder=enc, class_names=classes))
    assert det.nft is not None and det.nft.hidden == script_hidden(16, 64)
    test = unit(rng.standard_normal((10, 16)))
    np.testing.assert_allclose(det.confidence(3.0 * test), det.confidence(test), rtol=1e-5, atol=1e-6)
    v = torch.as_tensor(test)
    torch.testing.assert_close(det.nft.factors(v)[0], det.nft.factors(v.clone())[0], rtol=0, atol=0)
    # the paper preset trained in the script's form: one step per image (24 images x 1 epoch)
    assert det.script_form and len(det.history) == 1 and math.isfinite(det.history[0]["loss"])


def test_official_preset_trains_on_a_tenth_and_rounds_to_half(tmp_path) -> None:
    from tagood.detectors.base import load

    enc = RecordingEncoder()
    rng = np.random.default_rng(1)
    x = unit(rng.standard_normal((40, 16)))
    train = FeatureSet(name="train", image_embeds=x, labels=np.repeat(np.arange(4), 10),
                       extra={"crop_embeds": unit(x[:, None, :] + 0.3 * rng.standard_normal((40, 6, 16)))})
    det = KRNFT(neg_words=[f"w{i}" for i in range(30)], epochs=3, shots=10, n_crops=6, k_in=2, k_out=2, lr=1e-3,
                preset="official")
    det.fit(train, Context(dual_encoder=enc, class_names=["a", "b", "c", "d"]))
    assert det.nft is not None and det.nft.half_meta and len(det.history) == 3
    # the meta-networks' outputs are float16 values (a = 1 + ds(v) with the shared scale at 1 + its training)
    v = torch.as_tensor(unit(rng.standard_normal((4, 16))))
    with torch.no_grad():
        ds = det.nft.factors(v)[0] - det.nft.s_pos
        raw = det.nft.ds_pos(v)
    torch.testing.assert_close(ds, raw.half().float(), rtol=0, atol=1e-7)
    assert not torch.equal(raw, raw.half().float())  # the rounding is real
    assert det.history[1] != det.history[0]  # epoch 2 saw other images than epoch 1
    det.save(tmp_path / "d")
    back = load(tmp_path / "d")
    test = unit(rng.standard_normal((5, 16)))
    np.testing.assert_array_equal(back.confidence(test), det.confidence(test))
    assert back.options.preset == "official"


class PictureSource:
    """Four 32 x 48 pictures of two classes: a bright square on a dark ground, placed by the index."""

    def load(self, i: int) -> Image.Image:
        a = np.full((32, 48, 3), 20, np.uint8)
        a[4 + 4 * (i % 2) : 20 + 4 * (i % 2), 8 * (i // 2) : 8 * (i // 2) + 16] = (200, 60 + 40 * i, 30)
        return Image.fromarray(a)


class PictureStream:
    source = PictureSource()
    indices = np.arange(4)

    @staticmethod
    def preprocess(img: Image.Image) -> np.ndarray:
        return np.asarray(img.resize((8, 8), Image.Resampling.BILINEAR), np.float32).transpose(2, 0, 1) / 255.0


class PixelEncoder(RecordingEncoder):
    """Images -> a fixed random projection of their pixels (records each batch's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.image_batches: list[tuple[int, ...]] = []
        self.w = np.random.default_rng(5).standard_normal((3 * 8 * 8, self.embed_dim)).astype(np.float32)

    def encode_images(self, batch):
        b = np.asarray(batch, np.float32)
        self.image_batches.append(b.shape)
        return unit(b.reshape(len(b), -1) @ self.w)


def test_paper_preset_cuts_fresh_crops_of_the_originals_each_epoch() -> None:
    enc = PixelEncoder()
    stream = PictureStream()
    x = enc.encode_images(np.stack([stream.preprocess(stream.source.load(i)) for i in range(4)]))
    enc.image_batches.clear()
    train = FeatureSet(name="train", image_embeds=x, labels=np.array([0, 1, 0, 1]))
    train.images = stream
    det = KRNFT(preset="paper", neg_words=["w1", "w2", "w3", "w4", "w5"], shots=2, epochs=2, n_crops=4, k_in=2, k_out=1,
                n_groups=2)
    det.fit(train, Context(dual_encoder=enc, class_names=["left", "right"]))
    # 4 images x 2 epochs (fresh crops each) x 4 crops, each an 8 x 8 view of the original
    assert sum(s[0] for s in enc.image_batches) == 4 * 2 * 4 and all(s[1:] == (3, 8, 8) for s in enc.image_batches)
    assert len(det.history) == 2 and all(math.isfinite(h["loss"]) for h in det.history)
    off = KRNFT(preset="official", neg_words=["w1", "w2", "w3", "w4", "w5"], shots=2, epochs=3, n_crops=4, k_in=2,
                k_out=1, n_groups=2, epoch_fraction=0.5)
    enc.image_batches.clear()
    off.fit(train, Context(dual_encoder=enc, class_names=["left", "right"]))
    # half the images per epoch; epochs 2 and 3 share one crop set: 2 sets x 2 images x 4 crops at most
    assert sum(s[0] for s in enc.image_batches) <= 2 * 2 * 4 and off.history[1] != off.history[0]


def test_paper_preset_untrained_is_the_identity() -> None:
    enc = PixelEncoder()
    stream = PictureStream()
    x = enc.encode_images(np.stack([stream.preprocess(stream.source.load(i)) for i in range(4)]))
    enc.image_batches.clear()
    train = FeatureSet(name="train", image_embeds=x, labels=np.array([0, 1, 0, 1]))
    train.images = stream
    det = KRNFT(preset="paper", neg_words=["w1", "w2", "w3"], shots=2, epochs=0, n_crops=4, k_in=1, k_out=1)
    det.fit(train, Context(dual_encoder=enc, class_names=["left", "right"]))
    assert det.history == [] and enc.image_batches == []  # no crop is cut for no epoch
    z = 100.0 * x @ np.concatenate([det.text, det.neg_text]).T
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(det.confidence(x), p[:, :2].sum(1) / p.sum(1), rtol=1e-4)
