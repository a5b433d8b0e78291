"""TagOOD: vocabulary, decomposition, projector masking, EMA centres, training, scores, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from tagood import detectors
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.types import TagAttention, TokenSet
from tagood.detectors.tagood import (
    NO_TAG_SCORE,
    Projector,
    TagRule,
    Vocabulary,
    build_vocabulary,
    centre_score,
    ema_update,
    mean_tokens,
    select_tokens,
    token_mask,
)
from tagood.detectors.tagood.train import PRESETS, train_projector


def test_vocabulary_majority_collisions_and_file(tmp_path):
    kept = [np.array([5, 7]), np.array([5]), np.array([7, 9]), np.array([9]), np.array([9, 5])]
    labels = np.array([0, 0, 1, 1, 1])
    v = build_vocabulary(kept, labels, 2, class_names=["a", "b"], tag_names=[f"t{i}" for i in range(10)])
    assert v.class_tags == [[5], [9]] and v.freq == [[2], [3]] and v.collisions == {}
    v2 = build_vocabulary(kept, labels, 2, per_class=2)
    assert v2.class_tags == [[5, 7], [9, 5]] and v2.collisions == {5: [0, 1]}
    p = v.save(tmp_path / "vocab.tsv")
    text = p.read_text()
    assert "t5" in text and "t9" in text
    back = Vocabulary.load(p, 2)
    assert back.class_tags == v.class_tags
    p.write_text("class\tclass_name\ttag_id\ttag_name\tfrequency\n0\ta\t\tt7\t\n1\tb\t3\t\t\n")  # user edit by tag name
    edited = Vocabulary.load(p, 2, tag_names=[f"t{i}" for i in range(10)])
    assert edited.class_tags == [[7], [3]]
    with pytest.raises(ValueError, match="none of its"):
        build_vocabulary([np.array([], int)], np.array([0]), 1)


def test_decomposition_by_hand():
    maps = np.array([[[0.0, 1.0, 2.0, 4.0], [4.0, 3.0, 0.0, 0.0]]])  # 1 image, 2 tags, 4 tokens
    keep = np.array([[True, True]])
    mask, has = token_mask(maps, keep, tau=0.5)
    # tag0 -> [0, .25, .5, 1], tag1 -> [1, .75, 0, 0]; max -> [1, .75, .5, 1]; > 0.5 keeps 0, 1, 3
    assert mask.tolist() == [[True, True, False, True]] and has.tolist() == [True]
    mask0, _ = token_mask(maps, np.array([[True, False]]), tau=0.0)
    assert mask0.tolist() == [[True, True, True, True]]  # tau = 0: the paper's "all features" point (was: token 0 dropped)
    mask_small, _ = token_mask(maps, np.array([[True, False]]), tau=1e-9)
    assert mask_small.tolist() == [[False, True, True, True]]  # any tau > 0 is a strict "> tau"
    none_mask, none_has = token_mask(maps, np.array([[False, False]]), tau=0.5)
    assert none_has.tolist() == [False] and none_mask.all()
    toks = TokenSet.from_dense(np.arange(8, dtype=np.float32).reshape(1, 4, 2))
    sel = select_tokens(toks, mask)
    assert sel.positions.tolist() == [0, 1, 3]  # spatial positions survive
    np.testing.assert_array_equal(mean_tokens(sel), [[(0 + 2 + 6) / 3, (1 + 3 + 7) / 3]])


def test_tag_rule_threshold_topk_and_vocab():
    attn = TagAttention(np.array([[3, 1, 2]]), np.zeros((1, 3, 4)))
    probs = np.array([[0.0, 0.3, 0.05, 0.6]])
    assert TagRule(0.1, 3).kept(attn, probs).tolist() == [[True, True, False]]
    assert TagRule(0.1, 1).kept(attn, probs).tolist() == [[True, False, False]]
    assert TagRule(0.0, 3).kept(attn, probs, allowed=np.array([1, 2])).tolist() == [[False, True, True]]
    per_tag = np.array([0.9, 0.9, 0.01, 0.7])
    assert TagRule(per_tag, 3).kept(attn, probs).tolist() == [[False, False, True]]


def test_padding_masks_make_features_batch_independent():
    torch.manual_seed(0)
    m = Projector(6, 3, num_positions=10, dim=16, depth=2, heads=4, mlp=32, dropout=0.0).eval()
    rng = np.random.default_rng(0)
    lens = [2, 5, 1]
    ts = TokenSet(rng.normal(size=(sum(lens), 6)).astype(np.float32), np.r_[0, np.cumsum(lens)], rng.integers(0, 10, sum(lens)))
    x, p, mask = ts.pad()
    with torch.no_grad():
        batch = m.features(torch.as_tensor(x), torch.as_tensor(p), torch.as_tensor(mask))
        for i in range(3):
            xi, pi, mi = ts.select(np.array([i])).pad()
            alone = m.features(torch.as_tensor(xi), torch.as_tensor(pi), torch.as_tensor(mi))
            torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def test_packed_blocks_equal_the_padded_transformer():
    """The CPU's packed forward (per-token layers on real tokens only) is the padded nn.TransformerEncoder's
    function: same features in eval mode, same loss gradients in training mode; with dropout the training path
    runs and draws masks (two forwards differ)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    lens = np.array([7, 1, 12, 4, 12, 2])
    ts = TokenSet(rng.normal(size=(lens.sum(), 10)).astype(np.float32), np.r_[0, np.cumsum(lens)],
                  np.concatenate([np.sort(rng.choice(20, k, replace=False)) for k in lens]))
    x, p, mask = (torch.as_tensor(a) for a in ts.pad())
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    from tagood.detectors.tagood.projector import PackedLayout

    assert len(PackedLayout.of(torch.as_tensor(lens + 1)).groups) == 2  # the two-group attention path is exercised
    assert len(PackedLayout.of(torch.tensor([4, 4, 4])).groups) == 1
    assert len(PackedLayout.of(torch.tensor([], dtype=torch.long)).groups) == 1
    m = Projector(10, 3, num_positions=20, dim=16, depth=2, heads=4, mlp=32, dropout=0.0)
    grads, feats = {}, {}
    for packed in (False, True):
        m.packed = packed
        m.eval()
        with torch.no_grad():
            feats[packed] = m.features(x, p, mask)
        m.train()
        m.zero_grad()
        f, logits = m(x, p, mask)
        (torch.nn.functional.cross_entropy(logits, y) + f.square().mean()).backward()
        grads[packed] = {n: q.grad.clone() for n, q in m.named_parameters()}
    torch.testing.assert_close(feats[True], feats[False], rtol=1e-5, atol=1e-5)
    assert set(grads[True]) == set(grads[False])
    for n in grads[False]:
        torch.testing.assert_close(grads[True][n], grads[False][n], rtol=1e-4, atol=1e-6, msg=n)
    assert Projector(10, 3, 20).packed is None  # the default: packed on the CPU, padded elsewhere
    d = Projector(10, 3, num_positions=20, dim=16, depth=2, heads=4, mlp=32, dropout=0.5).train()
    d.packed = True
    assert not torch.allclose(d.features(x, p, mask), d.features(x, p, mask))


def test_ema_uses_batch_mean_per_class():
    c = torch.zeros(3, 2)
    f = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 2])
    ema_update(c, f, y, momentum=0.9)
    torch.testing.assert_close(c, torch.tensor([[0.2, 0.1], [0.0, 0.0], [0.5, 0.5]]))
    # a class absent from the batch keeps its centre bit for bit; present ones get m*c + (1-m)*mean exactly
    c = torch.tensor([[0.3, -1.7], [1.1, 2.9], [0.7, 0.1]])
    before = c.clone()
    ema_update(c, f, y, momentum=0.99)
    assert torch.equal(c[1], before[1])
    assert torch.equal(c[2], 0.99 * before[2] + (1 - 0.99) * f[2])


def test_padded_width_rounding_keeps_features():
    """CUDA batches are padded to a multiple of 16 (one attention plan per width); the extra padding is masked."""
    from tagood.detectors.tagood.train import _device_batch, _host_batch, pad_multiple

    assert pad_multiple(torch.device("cpu")) == 1 and pad_multiple(torch.device("cuda")) == 16
    torch.manual_seed(0)
    m = Projector(6, 3, num_positions=40, dim=16, depth=2, heads=4, mlp=32, dropout=0.0).eval()
    rng = np.random.default_rng(1)
    lens = np.array([3, 17, 9, 1])
    ts = TokenSet(rng.normal(size=(lens.sum(), 6)).astype(np.float32), np.r_[0, np.cumsum(lens)],
                  np.concatenate([np.sort(rng.choice(40, k, replace=False)) for k in lens]))
    idx = np.array([0, 1, 3])
    exact = _device_batch(_host_batch(ts, idx), torch.device("cpu"), packed=False)
    rounded = _device_batch(_host_batch(ts, idx, multiple=16), torch.device("cpu"), packed=False)
    assert exact[0].shape[1] == 17 and rounded[0].shape[1] == 32
    assert rounded[2][:, 17:].sum() == 0  # the added columns are padding
    packed = _device_batch(_host_batch(ts, idx), torch.device("cpu"))  # the CPU default: the real tokens only
    assert packed[0].shape == (lens[idx].sum(), 6) and torch.equal(packed[2], exact[2])
    with torch.no_grad():
        torch.testing.assert_close(m.features(*rounded), m.features(*exact), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.features(*packed), m.features(*exact), rtol=1e-5, atol=1e-5)


def _toy(n_per=40, seed=0, ood=False):
    """Token sets whose object tokens carry the class (block of 4 dims); background tokens are noise;
    tag attention points at the object tokens; tag k (ids 10+k) stands for class k."""
    rng = np.random.default_rng(seed)
    c, ntok, d = 3, 9, 16
    labels = np.repeat(np.arange(c), n_per)
    toks = rng.normal(0, 1.0, (len(labels), ntok, d)).astype(np.float32)
    maps = rng.random((len(labels), 2, ntok)).astype(np.float32)
    ids = np.zeros((len(labels), 2), np.int64)
    probs = np.full((len(labels), 20), 0.01)
    for i, k in enumerate(labels):
        obj = rng.choice(ntok, 3, replace=False)
        block = 3 if ood else k  # OOD objects use an unseen block (dims 12-15)
        toks[i, obj, 4 * block : 4 * block + 4] += 4.0
        maps[i, 0, obj] += 5.0
        ids[i] = [10 + k, 19]
        probs[i, 10 + k] = 0.8
    return FeatureSet(labels=labels, tokens=TokenSet.from_dense(toks), tag_probs=probs, tag_attention=TagAttention(ids, maps))


def test_tagood_separates_and_saves(tmp_path):
    train, test, ood = _toy(seed=0), _toy(n_per=20, seed=1), _toy(n_per=20, seed=2, ood=True)
    ctx = Context(seed=0)
    det = detectors.create("tagood[epochs=8,dim=32,mlp=64,batch_size=32,per_class=1]").fit(train, ctx)
    assert det.vocab.class_tags == [[10], [11], [12]]
    s_in, s_out = det.score(test), det.score(ood)
    assert roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out]) > 0.9
    det.save(tmp_path / "det")
    back = type(det).load(tmp_path / "det")
    np.testing.assert_allclose(back.score(ood), s_out, rtol=1e-5, atol=1e-6)
    again = detectors.create("tagood[epochs=8,dim=32,mlp=64,batch_size=32,per_class=1]").fit(train, ctx)
    np.testing.assert_array_equal(again.score(ood), s_out)  # seeded and deterministic on CPU


def test_no_tag_images_are_most_ood():
    train, test = _toy(seed=0), _toy(n_per=5, seed=1)
    test.tag_probs[:3] = 0.0  # first 3 images keep no tag
    for spec in ("cs[per_class=1,no_tag=ood]", "tagood[epochs=1,dim=16,mlp=32,per_class=1,no_tag=ood]",
                 "tagood[epochs=1,dim=16,mlp=32,per_class=1,test_tokens=all,no_tag=ood]"):  # the paper's rule
        s = detectors.create(spec).fit(train, Context()).score(test)
        assert np.all(s[:3] == NO_TAG_SCORE) and np.all(s[3:] < NO_TAG_SCORE)


def test_one_forward_pass_per_training_step():
    """Every sample passes through the projector once per epoch: one forward call per part of each step's batch
    (CPU: ``CPU_PARTS`` parts; a last batch of one sample is one part)."""
    from tagood.detectors.tagood.train import CPU_PARTS

    train = _toy(n_per=11)  # 33 samples: batches 8, 8, 8, 8, 1
    calls = {"n": 0, "samples": 0}
    orig = Projector.forward

    def counting(self, x, pos, mask):
        calls["n"] += 1
        calls["samples"] += len(mask)
        return orig(self, x, pos, mask)

    Projector.forward = counting
    try:
        cfg = PRESETS["small"].with_(epochs=2, batch_size=8, dim=16, mlp=32)
        train_projector(train.tokens, train.labels, 3, 9, cfg, progress=False)
    finally:
        Projector.forward = orig
    assert calls["samples"] == 2 * 33
    assert calls["n"] == 2 * (4 * CPU_PARTS + 1)


def _trained(cfg, threads: int, train):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, centres, hist = train_projector(train.tokens, train.labels, 3, 9, cfg, progress=False)
        assert torch.get_num_threads() == threads  # the parts' threads leave the budget as it was
    finally:
        torch.set_num_threads(old)
    # the attention key bias has a zero gradient in exact arithmetic (it adds the same q.b to every key's logit),
    # so Adam turns its rounding noise into lr-sized steps that differ between any two summation orders: left out
    dim = cfg.dim
    kept = [(p.detach()[torch.arange(len(p)) // dim != 1] if n.endswith("in_proj_bias") else p.detach()).flatten()
            for n, p in model.named_parameters()]
    return torch.cat(kept), centres, hist


def test_cpu_training_is_the_same_for_budgets_of_one_to_three_threads():
    """Without dropout the CPU step runs each batch's fixed parts on threads of their own with single-thread
    operators (budgets 2 and 3) or in turn on one thread (budget 1) and sums their gradients in part order: all
    train the same bits, so a run's numbers do not depend on ``--threads`` there, nor on the load."""
    train = _toy(n_per=20)
    cfg = PRESETS["small"].with_(epochs=3, batch_size=16, dim=32, mlp=64, seed=3)
    p1, c1, h1 = _trained(cfg, 1, train)
    for threads in (2, 3):
        p2, c2, h2 = _trained(cfg, threads, train)
        assert torch.equal(p1, p2) and torch.equal(c1, c2) and h1 == h2, threads
    assert h1[-1]["loss"] < h1[0]["loss"]  # it trained


@pytest.mark.parametrize("dropout,threads,concurrent", [(0.0, 2, True), (0.0, 1, False), (0.2, 2, False)])
def test_cpu_parts_run_on_threads_of_their_own_only_when_they_can(monkeypatch, dropout, threads, concurrent):
    """The parts' forward passes run on two worker threads (each with one operator thread) when the budget has a
    thread per part and nothing random is drawn; else all on the calling thread, with the whole budget.

    "At once" is checked by a barrier, not by which threads the scheduler happened to use: in the concurrent case
    each part's forward waits there until the other part's forward has started, which only two worker threads
    running the step's two parts together can pass (in turn, the first part would wait for ever: a
    ``BrokenBarrierError`` after the timeout). Under load a worker may start late but the test does not depend on
    when (it used to require two distinct threads to have run parts, which one fast worker sometimes did alone)."""
    import threading

    main = threading.get_ident()
    seen: list[tuple[int, str, int]] = []
    together = threading.Barrier(2, timeout=120)  # generous: only a broken pairing ever reaches it
    orig = Projector.forward

    def recording(self, x, pos, mask):
        seen.append((threading.get_ident(), threading.current_thread().name, torch.get_num_threads()))
        if concurrent and threading.get_ident() != main:
            together.wait()  # both parts of this step are in forward at the same time
        return orig(self, x, pos, mask)

    monkeypatch.setattr(Projector, "forward", recording)
    cfg = PRESETS["small"].with_(epochs=1, batch_size=16, dim=16, mlp=32, dropout=dropout)
    _trained(cfg, threads, _toy(n_per=8))  # 24 samples: batches of 16 and 8, each cut into two parts
    assert len(seen) == 4
    idents = {i for i, _, _ in seen}
    if concurrent:
        assert main not in idents and len(idents) == 2  # the barrier made both workers run a part of step 1
        assert all(name.startswith("tagood-parts") for _, name, _ in seen) and {n for _, _, n in seen} == {1}
    else:
        assert idents == {main} and {n for _, _, n in seen} == {threads}


def test_cpu_training_with_dropout_is_deterministic():
    """With dropout the parts run in turn (concurrent parts would draw the masks from torch's one global generator
    in a varying order): two runs of one seed and budget train the same bits, another seed other bits."""
    train = _toy(n_per=20)
    cfg = PRESETS["small"].with_(epochs=2, batch_size=16, dim=32, mlp=64, dropout=0.2, seed=3)
    a, b, c = _trained(cfg, 2, train), _trained(cfg, 2, train), _trained(cfg.with_(seed=4), 2, train)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert not torch.equal(a[0], c[0])


def test_cpu_parts_equal_the_whole_batch_up_to_rounding(monkeypatch):
    """The parts' weighted losses sum to the batch's mean loss, so their summed gradients are the whole batch's:
    training with the batch in one piece (``CPU_PARTS = 1``) reaches the same weights up to float rounding."""
    from tagood.detectors.tagood import train as tr

    train = _toy(n_per=20)
    cfg = PRESETS["small"].with_(epochs=2, batch_size=16, dim=32, mlp=64, seed=1)
    p2, c2, h2 = _trained(cfg, 2, train)
    monkeypatch.setattr(tr, "CPU_PARTS", 1)
    p1, c1, h1 = _trained(cfg, 2, train)
    assert not torch.equal(p1, p2)  # a different summation order ...
    torch.testing.assert_close(p2, p1, atol=2e-5, rtol=1e-4)  # ... of the same arithmetic
    torch.testing.assert_close(c2, c1, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose([h["loss"] for h in h2], [h["loss"] for h in h1], rtol=1e-5)
    assert [h["train_acc"] for h in h2] == [h["train_acc"] for h in h1]


def test_scores_by_hand():
    centres = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    f = np.array([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    np.testing.assert_allclose(centre_score(f, centres, "cosine"), [-1.0, 0.0])
    np.testing.assert_allclose(centre_score(f, centres, "euclid"), [1.0, np.sqrt(2)])
    # chunk 1 cos 1, chunk 2 (all zeros) 0 -> 0.5 x prob 0.5
    np.testing.assert_allclose(centre_score(f, centres, "chunk", tag_prob=np.array([0.5, 1.0]), chunks=2), [-0.25, -0.0])
    kl = centre_score(f, centres, "kl")
    assert kl[0] < kl[1] and centre_score(centres, centres, "kl") == pytest.approx([0.0, 0.0], abs=1e-12)
    with pytest.raises(ValueError):
        centre_score(f, centres, "manhattan")


def test_ablation_detectors_registered():
    names = detectors.available()
    assert {"tagood", "tagscore", "cs", "ce+cs"} <= set(names)
    assert detectors.create("tagood[tau=0.25,score=euclid]").tau == 0.25
    with pytest.raises(ValueError, match="unknown TagOOD options"):
        detectors.create("tagood[epoch=3]")
