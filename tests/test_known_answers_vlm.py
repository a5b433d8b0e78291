"""Known-answer tests of the vision-language detectors on hand-made image and text embeddings: a lookup "dual
encoder" gives every prompt a fixed vector (an input of the test, like a real encoder's weights), and each score is
re-stated here in float64 from the method's paper, for every option path and its sign (higher = more OOD). No
expected value is read from a detector's fitted state (KR-NFT's NFT weights are set by hand, not trained).

Where each formula comes from:

* MCM: Ming et al., NeurIPS 2022, Eq. 1-2: ``S_MCM(x) = max_c e^{cos(x, t_c)/tau} / sum_c' e^{cos(x, t_c')/tau}``;
  score = ``-S_MCM``. Prompt ensembles: CLIP's (average of the normalised template embeddings, renormalised).
* GL-MCM: Miyai et al., arXiv 2304.04521, Eq. 3-5: ``S = S_MCM(global) + lam max_p S_MCM(patch_p)``; score = ``-S``
  (a sample without patches has no local term).
* NegLabel: Jiang et al., ICLR 2024, Eq. 4 (NegMining: ``d_i = percentile_eta({-cos(y~_i, y_k)}_k)``, the
  farthest kept) and Eq. 6-7 (``S(x) = sum_i e^{cos(x,y_i)/tau} / (sum_i e^{cos(x,y_i)/tau} + sum_j e^{cos(x,y~_j)/tau})``,
  averaged over random groups of negative labels, Sec. 3.3); score = ``-S``.
* CSP: Chen et al., NeurIPS 2024, Sec. 3: NegLabel's score with the nouns and the conjugated labels
  ``"<adjective> <superclass>"`` mined separately (the farthest ``ratio`` of each, near-duplicates of an IND
  label, cosine above ``max_sim``, never kept).
* AdaNeg: Zhang & Zhang, NeurIPS 2024, Sec. 3 (Eq. 3-9): gated memory per label (NegLabel share above
  ``thres + gap (1 - thres)``: the slot of the most likely IND label; below ``thres - gap thres``: of the most likely
  negative label; a full slot keeps its lowest-entropy features), task-adaptive proxy (the slot's mean) or
  sample-adaptive proxy (entries weighted by ``exp(-beta (1 - x.m))``), ``S_ada`` = NegLabel's share on the proxies;
  score = ``-(S_ada + lam S)``.
* LoCoOp: Miyai et al., NeurIPS 2023, Sec. 3.3: scored with MCM or GL-MCM on the learned prompts (untrained here:
  the prompts are the class prompts).
* KR-NFT / NFT: Zhu et al., ACM MM 2025 (arXiv 2507.19847; /work/shared/papers/kr-nft-abstract.txt) and the public
  code: every text feature is transformed per image, ``t' = normalise(a(v) t + c(v))`` with ``a = s + ds(v)``,
  ``c = b + db(v)`` (separate factors for the IND and the negative rows, meta-networks Linear-ReLU-Linear); the
  confidence is the IND share of ``softmax(logit_scale cos(v, t'))`` over the IND and negative rows; score = its
  negative.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import tagood
from tagood.core.types import TokenSet
from tagood.detectors.vlm import glmcm, mcm, neglabel

E = 6
CLASSES = ["cat", "dog", "owl"]
TPL = "a photo of a {}."


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def vec(text: str) -> np.ndarray:
    """The lookup encoder's fixed unit vector of a text (seeded by its hash), float32."""
    seed = int.from_bytes(hashlib.sha256(("kat:" + text).encode()).digest()[:4], "little")
    return unit(np.random.default_rng(seed).standard_normal(E)).astype(np.float32)


class Lookup:
    """A dual encoder whose text embeddings are fixed vectors (:func:`vec`), with an alias table."""

    id = "known-answers-lookup"
    weights_hash = "kat1"
    transform_id = "none"
    embed_dim = E
    logit_scale = 100.0

    def __init__(self, alias: dict[str, str] | None = None) -> None:
        self.alias = alias or {}

    def preprocess(self, image):
        return np.zeros((3, 4, 4), np.float32)

    def encode_images(self, batch):
        raise AssertionError("image embeddings are given in these tests")

    def encode_texts(self, texts):
        return np.stack([vec(self.alias.get(t, t)) for t in texts])


def ctx(enc: Lookup | None = None) -> tagood.Context:
    return tagood.Context(dual_encoder=enc or Lookup(), class_names=CLASSES)


def prompts(names: list[str], templates: tuple[str, ...] = (TPL,)) -> np.ndarray:
    """Class-prompt embeddings as CLIP builds an ensemble: the mean of the template embeddings, renormalised."""
    return np.stack([unit(np.mean([vec(t.format(n)).astype(np.float64) for t in templates], axis=0))
                     .astype(np.float32).astype(np.float64) for n in names])


def images(seed: int, n: int = 8) -> np.ndarray:
    """Image embeddings near each class prompt, and a few far from all of them."""
    rng = np.random.default_rng(seed)
    t = prompts(CLASSES)
    near = t[np.arange(n - 3) % 3] + 0.3 * rng.standard_normal((n - 3, E))
    far = rng.standard_normal((3, E))
    return np.concatenate([near, far]).astype(np.float32)


def softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def mcm_conf(x: np.ndarray, t: np.ndarray, tau: float) -> np.ndarray:
    return softmax_rows(unit(x) @ unit(t).T / tau).max(axis=1)


# -- MCM ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_mcm_known_answer(tau) -> None:
    x = images(0)
    det = tagood.create("mcm", tau=tau).fit(tagood.FeatureSet(), ctx())
    want = -mcm_conf(x, prompts(CLASSES), tau)
    np.testing.assert_allclose(det.score(tagood.FeatureSet(image_embeds=x)), want, rtol=1e-6)
    np.testing.assert_allclose(mcm.score(x, prompts(CLASSES), tau), want, rtol=1e-6)
    # closed form: an image equal to a prompt, tau = 1: e^1 / (e^1 + e^c1 + e^c2)
    t = prompts(CLASSES)
    c = t[0] @ t.T
    assert det.score(t[:1].astype(np.float32))[0] == pytest.approx(-np.exp(1 / tau) / np.exp(c / tau).sum(), rel=1e-6)
    if tau == 0.1:  # sign: the images near a prompt score lower than the far ones on average
        s = det.score(x)
        assert s[:5].mean() < s[5:].mean()


def test_mcm_prompt_ensemble() -> None:
    tpls = ("a photo of a {}.", "a drawing of a {}.", "itap of a {}.")
    x = images(1)
    det = tagood.create("mcm", templates=list(tpls)).fit(tagood.FeatureSet(), ctx())
    np.testing.assert_allclose(det.text, prompts(CLASSES, tpls), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(det.score(x), -mcm_conf(x, prompts(CLASSES, tpls), 1.0), rtol=1e-6)
    one = tagood.create("mcm", template="a drawing of a {}.").fit(tagood.FeatureSet(), ctx())
    np.testing.assert_allclose(one.score(x), -mcm_conf(x, prompts(CLASSES, ("a drawing of a {}.",)), 1.0), rtol=1e-6)


# -- GL-MCM -------------------------------------------------------------------------------------------------------
def ragged_patches(seed: int, counts: list[int]) -> TokenSet:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((sum(counts), E)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    positions = np.concatenate([np.arange(c) for c in counts]).astype(np.int64)
    return TokenSet(values, offsets, positions)


@pytest.mark.parametrize("tau,tau_local,lam", [(1.0, 1.0, 1.0), (0.5, 0.05, 0.3), (1.0, 0.2, 0.0)])
def test_glmcm_known_answer(tau, tau_local, lam) -> None:
    x = images(2)
    counts = [3, 1, 0, 5, 2, 4, 2, 3]  # sample 2 has no patch: no local term
    patches = ragged_patches(3, counts)
    det = tagood.create("glmcm", tau=tau, tau_local=tau_local, lam=lam).fit(tagood.FeatureSet(), ctx())
    t = prompts(CLASSES)
    local = np.zeros(len(x))
    for i in range(len(x)):
        p = patches.values[patches.offsets[i] : patches.offsets[i + 1]]
        if len(p):
            local[i] = mcm_conf(p, t, tau_local).max()
    want = -(mcm_conf(x, t, tau) + lam * local)
    got = det.score(tagood.FeatureSet(image_embeds=x, patch_embeds=patches))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(glmcm.score(x, patches, t, tau, tau_local, lam), want, rtol=1e-6)
    assert local[2] == 0.0 and got[2] == pytest.approx(-mcm_conf(x[2:3], t, tau)[0], rel=1e-6)


# -- NegLabel -----------------------------------------------------------------------------------------------------
NEG = ["rock", "cloud", "car", "tree", "river"]


def share(x: np.ndarray, t: np.ndarray, neg: np.ndarray, tau: float, groups: list[list[int]]) -> np.ndarray:
    """NegLabel's Eq. 6-7, averaged over the groups of negative labels."""
    ei = np.exp(unit(x) @ unit(t).T / tau).sum(axis=1)
    en = np.exp(unit(x) @ unit(neg).T / tau)
    return np.mean([ei / (ei + en[:, g].sum(axis=1)) for g in groups], axis=0)


@pytest.mark.parametrize("tau,ngroup", [(0.1, 1), (0.05, 5), (0.2, 100)])
def test_neglabel_known_answer(tau, ngroup) -> None:
    """ngroup = 1: one group of all; ngroup >= the number of negatives: every negative its own group -- both
    closed forms, whatever the random split."""
    x = images(4)
    det = tagood.create("neglabel", neg_words=NEG, tau=tau, ngroup=ngroup).fit(tagood.FeatureSet(), ctx())
    groups = [list(range(5))] if ngroup == 1 else [[j] for j in range(5)]
    want = -share(x, prompts(CLASSES), prompts(NEG), tau, groups)
    np.testing.assert_allclose(det.score(tagood.FeatureSet(image_embeds=x)), want, rtol=1e-5)
    got = neglabel.score(x, prompts(CLASSES), prompts(NEG), tau, [np.array(g) for g in groups])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    s = det.score(x)
    assert np.all((s >= -1) & (s <= 0)) and s[:5].mean() < s[5:].mean()


def test_neglabel_random_groups_average_over_a_partition() -> None:
    """ngroup = 2 of 5 negatives: the score is the mean of the two groups' shares, for a split of the negatives
    into two near-equal groups (the split is seeded; checked as a partition, then the formula on it)."""
    x = images(5)
    det = tagood.create("neglabel[ngroup=2,tau=0.1]", neg_words=NEG).fit(tagood.FeatureSet(), ctx())
    groups = [sorted(np.asarray(g).tolist()) for g in det.groups]
    assert sorted(len(g) for g in groups) == [2, 3] and sorted(sum(groups, [])) == list(range(5))
    want = -share(x, prompts(CLASSES), prompts(NEG), 0.1, groups)
    np.testing.assert_allclose(det.score(x), want, rtol=1e-5)
    single = -share(x, prompts(CLASSES), prompts(NEG), 0.1, [list(range(5))])
    assert not np.allclose(want, single)


def test_negmining_keeps_the_farthest_candidates() -> None:
    """NegMining (NegLabel Eq. 4): d = the eta-quantile (linear) of -cos to the 3 IND prompts; with 3 values and
    eta = 0.05 that is the smallest plus 0.1 x (second - smallest). The n_neg farthest are kept, farthest first;
    IND names are never candidates."""
    corpus = ["cat", "pebble", "storm", "violin", "ladder", "mango", "engine", "Dog"]
    det = tagood.create("neglabel[n_neg=3,ngroup=1,tau=0.1]", corpus=corpus).fit(tagood.FeatureSet(), ctx())
    cands = [w for w in corpus if w.lower() not in CLASSES]
    t = prompts(CLASSES)
    d = []
    for w in cands:
        v = np.sort(-(prompts([w])[0] @ t.T))
        d.append(v[0] + 0.1 * (v[1] - v[0]))
    order = [cands[i] for i in np.argsort(-np.array(d), kind="stable")[:3]]
    assert det.neg_words == order
    x = images(6)
    np.testing.assert_allclose(det.score(x), -share(x, t, prompts(order), 0.1, [[0, 1, 2]]), rtol=1e-5)


# -- CSP ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio,max_sim", [(0.5, 0.95), (1.0, 0.6)])
def test_csp_known_answer(ratio, max_sim) -> None:
    """One superclass word, so each conjugated label is "<adjective> thing"; nouns and conjugated labels mined
    apart (the farthest floor(ratio n) of each), near-duplicates (max cosine to an IND prompt above max_sim) never
    kept; "kitty" is encoded as the cat prompt (a near-duplicate)."""
    nouns = ["pebble", "storm", "violin", "ladder", "kitty", "owl"]
    adjectives = ["glossy", "arid", "woolly", "rusty"]
    enc = Lookup({"a photo of a kitty.": "a photo of a cat."})
    det = tagood.create("csp", nouns=nouns, adjectives=adjectives, superclasses=["thing"], ratio=ratio,
                        max_sim=max_sim, ngroup=100, tau=0.1).fit(tagood.FeatureSet(), ctx(enc))
    t = prompts(CLASSES)

    def mined(words: list[str], embeds: np.ndarray) -> list[str]:
        d = []
        for v in embeds:
            c = np.sort(-(v @ t.T))
            d.append(-np.inf if (v @ t.T).max() > max_sim else c[0] + 0.1 * (c[1] - c[0]))
        order = np.argsort(-np.array(d), kind="stable")[: int(len(words) * ratio)]
        return [words[i] for i in order if np.isfinite(d[i])]

    noun_pool = [w for w in nouns if w not in CLASSES]  # "owl" is an IND class name
    noun_emb = np.stack([prompts(["cat"])[0] if w == "kitty" else prompts([w])[0] for w in noun_pool])
    conj = [f"{a} thing" for a in adjectives]
    kept = mined(noun_pool, noun_emb) + mined(conj, prompts(conj))
    assert det.neg_words == kept and "kitty" not in kept
    x = images(7)
    neg = np.stack([prompts(["cat"])[0] if w == "kitty" else prompts([w])[0] for w in kept])
    want = -share(x, t, neg, 0.1, [[j] for j in range(len(kept))])
    np.testing.assert_allclose(det.score(x), want, rtol=1e-5)


# -- AdaNeg -------------------------------------------------------------------------------------------------------
def adaneg_by_hand(x: np.ndarray, t: np.ndarray, neg: np.ndarray, *, tau: float, thres: float, gap: float, cap: int,
                   beta: float, lam: float, proxies: str, batch: int) -> np.ndarray:
    """AdaNeg (Zhang & Zhang, Sec. 3), one sample at a time: each batch is written into the memory (in stream
    order), then scored against it."""
    labels = np.concatenate([unit(t), unit(neg)])
    c = len(t)
    slots: list[list[tuple[float, int, np.ndarray]]] = [[] for _ in labels]  # (entropy, arrival, feature)
    xs = unit(x.astype(np.float32).astype(np.float64))
    seen = 0
    out = []

    def ent(z: np.ndarray) -> float:
        p = softmax_rows(z[None])[0]
        return float(-(p * np.log(p)).sum())

    def s_of(z: np.ndarray) -> float:
        return float(np.exp(z[:c]).sum() / np.exp(z).sum())

    for a in range(0, len(xs), batch):
        xb = xs[a : a + batch]
        static = []
        for v in xb:
            z = labels @ v / tau
            s = s_of(z)
            static.append(s)
            if s > thres + gap * (1 - thres):
                k, e = int(np.argmax(z[:c])), ent(z[:c])
            elif s < thres - gap * thres:
                k, e = c + int(np.argmax(z[c:])), ent(z[c:])
            else:
                seen += 1
                continue
            slots[k].append((e, seen, v))
            slots[k] = sorted(slots[k], key=lambda r: (r[0], r[1]))[:cap]
            seen += 1
        for v, s in zip(xb, static, strict=True):
            cos = np.empty(len(labels))
            for k, lab in enumerate(labels):
                entries = [lab] + [r[2] for r in slots[k]]
                w = [np.exp(-beta * (1 - v @ m)) if proxies == "sample" else 1.0 for m in entries]
                p = np.sum([wi * m for wi, m in zip(w, entries, strict=True)], axis=0)
                cos[k] = v @ p / np.linalg.norm(p)
            out.append(-(s_of(cos / tau) + lam * s))
    return np.array(out)


@pytest.mark.parametrize("proxies,lam,memleng,batch,thres,gap", [("sample", 0.1, 3, 4, 0.5, 0.5),
                                                                  ("task", 0.5, 2, 3, 0.6, 0.3),
                                                                  ("sample", 0.0, 4, 16, 0.4, 0.8)])
def test_adaneg_known_answer(proxies, lam, memleng, batch, thres, gap) -> None:
    rng = np.random.default_rng(8)
    t, neg = prompts(CLASSES), prompts(NEG)
    # a stream: images near IND prompts, near negative labels, and in between
    pick = rng.integers(0, 3, 6)
    w = np.linspace(0.0, 1.0, 12)[:, None]  # IND-to-negative mixtures: static shares across (0, 1)
    x = np.concatenate([t[pick] + 0.15 * rng.standard_normal((6, E)),
                        neg[rng.integers(0, 5, 5)] + 0.15 * rng.standard_normal((5, E)),
                        rng.standard_normal((3, E)),
                        w * t[rng.integers(0, 3, 12)] + (1 - w) * neg[rng.integers(0, 5, 12)]]).astype(np.float32)
    x = x[rng.permutation(len(x))]
    opts = {"neg_words": NEG, "ngroup": 1, "tau": 0.1, "thres": thres, "gap": gap, "memleng": memleng, "beta": 5.5,
            "lam": lam, "proxies": proxies, "batch_size": batch}
    det = tagood.create("adaneg", **opts).fit(tagood.FeatureSet(), ctx())
    got = det.score(tagood.FeatureSet(image_embeds=x))
    want = adaneg_by_hand(x, t, neg, tau=0.1, thres=thres, gap=gap, cap=memleng - 1, beta=5.5, lam=lam,
                          proxies=proxies, batch=batch)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert len(det.memory) > 0  # the gates did route samples into the memory
    # with an empty memory (one sample per stream) the score is -(1 + lam) S
    one = det.score(x[:1])
    st = share(x[:1], t, neg, 0.1, [list(range(5))])
    ad = adaneg_by_hand(x[:1], t, neg, tau=0.1, thres=thres, gap=gap, cap=memleng - 1, beta=5.5, lam=lam,
                        proxies=proxies, batch=1)
    np.testing.assert_allclose(one, ad, rtol=1e-5)
    if not len(det.memory):
        np.testing.assert_allclose(one, -(1 + lam) * st, rtol=1e-5)


# -- LoCoOp (untrained) -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["glmcm", "mcm"])
def test_locoop_untrained_scores_with_the_class_prompts(kind) -> None:
    x = images(9)
    patches = ragged_patches(10, [2, 3, 1, 2, 4, 2, 1, 3])
    y = np.arange(len(x)) % 3
    train = tagood.FeatureSet(image_embeds=x, patch_embeds=patches, labels=y)
    det = tagood.create("locoop", epochs=0, score=kind, shots=None).fit(train, ctx())
    t = prompts(CLASSES)
    local = np.array([mcm_conf(patches.values[patches.offsets[i] : patches.offsets[i + 1]], t, 1.0).max()
                      for i in range(len(x))])
    want = -(mcm_conf(x, t, 1.0) + (local if kind == "glmcm" else 0.0))
    np.testing.assert_allclose(det.score(train), want, rtol=1e-6)


# -- KR-NFT -------------------------------------------------------------------------------------------------------
def krnft_fit(epochs: int = 0, **opts) -> tagood.Detector:
    rng = np.random.default_rng(11)
    x = images(12, 9)
    y = np.arange(9) % 3
    crops = unit(x[:, None, :] + 0.3 * rng.standard_normal((9, 4, E))).astype(np.float32)
    train = tagood.FeatureSet(image_embeds=x, labels=y, extra={"crop_embeds": crops})
    return tagood.create("krnft", neg_words=NEG, epochs=epochs, n_crops=4, k_in=2, k_out=2, hidden=5,
                         shots=None, **opts).fit(train, ctx())


def krnft_by_hand(v: np.ndarray, t: np.ndarray, neg: np.ndarray, nft: torch.nn.Module | None, scale: float,
                  half: bool = False) -> np.ndarray:
    """NFT in float64, one image at a time: t' = normalise(a t + c), a = s + ds(v), c = b + db(v) with the
    meta-networks reading the L2-normalised image feature (their outputs rounded to float16 with ``half``, the
    official code's half-precision meta-networks); the IND share of softmax(scale cos(v, t')) over the IND and
    negative rows."""
    def p(name: str) -> np.ndarray:
        return dict(nft.named_parameters())[name].detach().double().numpy()

    def meta(prefix: str, u: np.ndarray) -> np.ndarray:
        h = np.maximum(p(f"{prefix}.0.weight") @ unit(u) + p(f"{prefix}.0.bias"), 0.0)
        out = p(f"{prefix}.2.weight") @ h + p(f"{prefix}.2.bias")
        return out.astype(np.float16).astype(np.float64) if half else out

    out = []
    for u in v.astype(np.float64):
        rows = []
        for kind, tt in (("pos", t), ("neg", neg)):
            if nft is None:
                rows.append(tt)
                continue
            a = p(f"s_{kind}") + meta(f"ds_{kind}", u)
            c = p(f"b_{kind}") + meta(f"db_{kind}", u)
            rows.append(unit(a * tt + c))
        z = scale * np.concatenate([unit(r) @ unit(u) for r in rows])
        e = np.exp(z - z.max())
        out.append(-e[: len(t)].sum() / e.sum())
    return np.array(out)


def mixed(seed: int, n: int = 10) -> np.ndarray:
    """Images between an IND prompt and a negative label: IND shares spread over (0, 1) at logit scale 100."""
    rng = np.random.default_rng(seed)
    t, neg = prompts(CLASSES), prompts(NEG)
    return (t[rng.integers(0, 3, n)] + neg[rng.integers(0, 5, n)] + 0.05 * rng.standard_normal((n, E))).astype(np.float32)


def test_krnft_untrained_is_the_ungrouped_ind_share() -> None:
    det = krnft_fit(0)
    x = np.concatenate([images(13), mixed(13)])
    want = krnft_by_hand(x, prompts(CLASSES), prompts(NEG), None, 100.0)
    np.testing.assert_allclose(det.score(tagood.FeatureSet(image_embeds=x)), want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(want, -share(x, prompts(CLASSES), prompts(NEG), 0.01, [list(range(5))]), rtol=1e-9)


@pytest.mark.parametrize("half", [False, True])
def test_krnft_scores_with_hand_set_nft_factors(half) -> None:
    det = krnft_fit(0, half_meta=half)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for q in det.nft.parameters():
            q.copy_(q + 0.1 * torch.randn(q.shape, generator=g))
    x = mixed(14)
    want = krnft_by_hand(x, prompts(CLASSES), prompts(NEG), det.nft, 100.0, half)
    untuned = krnft_by_hand(x, prompts(CLASSES), prompts(NEG), None, 100.0)
    assert np.abs(want - untuned).max() > 0.1  # the factors matter
    assert ((want < -0.01) & (want > -0.99)).sum() >= 4  # not saturated
    np.testing.assert_allclose(det.score(x), want, rtol=1e-4, atol=1e-6)
