"""Classic detectors: known answers on synthetic features, separation, and one smoke test over every registered detector."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from scipy.special import logsumexp, softmax
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from tagood import detectors
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.types import LinearHead, TagAttention, TokenSet
from tagood.detectors.ash import ash_shape

RNG = np.random.default_rng(0)


def _gauss(n_per=60, d=16, c=3, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    means = np.eye(c, d) * 4.0
    x = np.concatenate([rng.normal(means[k] + shift, 1.0, (n_per, d)) for k in range(c)])
    y = np.repeat(np.arange(c), n_per)
    return np.abs(x).astype(np.float32), y  # non-negative like post-ReLU features


def _head(d=16, c=3):
    return LinearHead(np.eye(c, d, dtype=np.float32) * 2.0, np.zeros(c, np.float32))


def test_logit_scores_known_values():
    z = RNG.normal(size=(7, 5))
    fs = FeatureSet(logits=z)
    np.testing.assert_allclose(detectors.create("msp").fit(fs).score(fs), -softmax(z, 1).max(1))
    np.testing.assert_allclose(detectors.create("maxlogit").fit(fs).score(fs), -z.max(1))
    np.testing.assert_allclose(detectors.create("energy").fit(fs).score(fs), -logsumexp(z, 1))
    np.testing.assert_allclose(detectors.create("energy[temperature=2]").fit(fs).score(z), -2 * logsumexp(z / 2, 1))


def test_react_percentile_100_equals_energy():
    x, y = _gauss()
    fs, ctx = FeatureSet(features=x, labels=y), Context(head=_head())
    r = detectors.create("react[percentile=100]").fit(fs, ctx).score(fs)
    np.testing.assert_allclose(r, -logsumexp(x @ ctx.head.weight.T, 1), rtol=1e-6)
    r90 = detectors.create("react").fit(fs, ctx)
    assert r90.threshold == pytest.approx(np.percentile(x, 90))


def test_ash_prunes_the_right_fraction():
    x = RNG.random((4, 100))
    p = ash_shape(x, 90, "p")
    assert ((p != 0).sum(1) == 10).all()
    np.testing.assert_array_equal(np.sort(p, 1)[:, -10:], np.sort(x, 1)[:, -10:])
    s = ash_shape(x, 90, "s")
    np.testing.assert_allclose(s.sum(1) / p.sum(1), np.exp(x.sum(1) / p.sum(1)))


def test_ash_tie_rule_hand_computed():
    """Ties at the cut are all kept, zeros are never kept (see ash_shape). The old position-ordered top-k
    gave [3, 1, 0, ...] / ASH-B [2.5, 2.5, 0, ...] for row a and ASH-B [1, 1, 1, 0, ...] for row b."""
    a = np.array([[3.0, 1.0, 1.0] + [0.0] * 7])  # D = 10, percentile 80 -> k = 2; the cut falls on the tied 1s
    np.testing.assert_array_equal(ash_shape(a, 80, "p"), [[3, 1, 1] + [0] * 7])
    np.testing.assert_allclose(ash_shape(a, 80, "b"), [[5 / 3] * 3 + [0] * 7])
    np.testing.assert_allclose(ash_shape(a, 80, "s"), [[3 * np.e, np.e, np.e] + [0] * 7])  # s1 = s2 = 5
    b = np.array([[2.0, 1.0] + [0.0] * 8])  # percentile 70 -> k = 3, but only 2 activations are positive
    np.testing.assert_allclose(ash_shape(b, 70, "b"), [[1.5, 1.5] + [0] * 8])
    np.testing.assert_array_equal(ash_shape(b, 70, "p"), b)
    np.testing.assert_array_equal(ash_shape(np.zeros((1, 10)), 70, "b"), np.zeros((1, 10)))
    # the detector: energy of the shaped features through the head
    w = np.zeros((2, 10), np.float32)
    w[0, 0], w[1, 1], w[1, 2] = 1.0, 1.0, 1.0
    head = LinearHead(w, np.zeros(2, np.float32))
    det = detectors.create("ash[variant=b,percentile=80]").fit(FeatureSet(features=a), Context(head=head))
    assert det.score(FeatureSet(features=a))[0] == pytest.approx(-np.log(np.exp(5 / 3) + np.exp(10 / 3)), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 6.0]), min_size=12, max_size=12), min_size=1, max_size=5),
       st.sampled_from([50.0, 75.0, 90.0]), st.sampled_from(["s", "b", "p"]), st.randoms(use_true_random=False))
def test_ash_tie_rule_properties(rows, percentile, variant, rnd):
    """ReLU6-like values with many ties: ASH is permutation equivariant over units, never keeps a zero,
    keeps every value above the cut, and ASH-B preserves each row's sum."""
    x = np.array(rows)
    perm = np.array(rnd.sample(range(12), 12))
    out = ash_shape(x, percentile, variant)
    np.testing.assert_allclose(ash_shape(x[:, perm], percentile, variant), out[:, perm])
    kept = out != 0
    assert not (kept & (x <= 0)).any()
    k = 12 - int(np.round(12 * percentile / 100.0))
    for row, m in zip(x, kept, strict=True):
        n_pos = int((row > 0).sum())
        assert m.sum() >= min(k, n_pos)  # at least k kept when there are k positive values
        if m.any() and (~m & (row > 0)).any():
            assert row[m].min() > row[~m & (row > 0)].max()  # every kept value beats every dropped one
    if variant == "b":
        has = kept.any(axis=1)
        np.testing.assert_allclose(out[has].sum(1), x[has].sum(1))


def test_lhact_hand_computed():
    """Per-unit percentiles of the training activations (numpy's linear interpolation): unit 0 of
    [0, 1, 2, 3, 4] gives low 0.4 and high 3.6; unit 1 is constant 10 (low = high = 10)."""
    train = np.array([[0.0, 10.0], [1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [4.0, 10.0]])
    head = LinearHead(np.array([[1.0, 0.0], [0.0, 0.1]], np.float32), np.array([0.0, 0.5], np.float32))
    det = detectors.create("lhact").fit(FeatureSet(features=train), Context(head=head))
    np.testing.assert_allclose(det.low, [0.4, 10.0])
    np.testing.assert_allclose(det.high, [3.6, 10.0])
    x = np.array([[5.0, 12.0], [0.3, 9.0], [2.0, 10.0]])
    np.testing.assert_allclose(det.rectify(x), [[3.6, 10.0], [0.0, 0.0], [2.0, 10.0]])
    logits = np.array([[3.6, 1.0 + 0.5], [0.0, 0.5], [2.0, 1.5]])  # head: [x0, 0.1 x1 + 0.5]
    np.testing.assert_allclose(det.score(FeatureSet(features=x)), -logsumexp(logits, axis=1), rtol=1e-6)


def test_mahalanobis_matches_scipy():
    x, y = _gauss(d=6, n_per=40)
    det = detectors.create("mahalanobis").fit(FeatureSet(features=x, labels=y))
    q = RNG.normal(2, 2, (5, 6))
    got = det.score(FeatureSet(features=q))
    vi = det.precision
    want = [min(scipy_mahalanobis(v, m, vi) ** 2 for m in det.means) for v in q]
    np.testing.assert_allclose(got, want, rtol=1e-8)


def test_knn_matches_sklearn():
    x, y = _gauss()
    det = detectors.create("knn[k=5]").fit(FeatureSet(features=x))
    q = np.abs(RNG.normal(1, 2, (9, 16)))
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    qz = q / np.linalg.norm(q, axis=1, keepdims=True)
    want = NearestNeighbors(n_neighbors=5).fit(z).kneighbors(qz)[0][:, -1]
    np.testing.assert_allclose(det.score(FeatureSet(features=q)), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype, atol", [(np.float32, 1e-5), (np.float64, 1e-8)])
def test_vim_residual_is_orthogonal_to_principal_space(dtype, atol):
    x, y = _gauss(d=16)
    x = x.astype(dtype)  # float32 features: ViM's float32 path (a float32 residual basis)
    det = detectors.create("vim[dim=4]").fit(FeatureSet(features=x, labels=y), Context(head=_head()))
    assert det.ns.shape == (16, 12) and det.ns.dtype == dtype
    xc = x.astype(np.float64) - det.u
    cov = xc.T @ xc / len(xc)
    _, vecs = np.linalg.eigh(cov)
    principal = vecs[:, -4:]
    np.testing.assert_allclose(principal.T @ det.ns, 0, atol=atol)


def test_featurenorm_picks_block_with_largest_ratio():
    ind = np.array([[1.0, 5.0, 2.0]] * 10)
    pseudo = np.array([[1.0, 1.0, 1.9]] * 10)
    det = detectors.create("featurenorm").fit(FeatureSet(block_norms=ind), Context(pseudo_ood=FeatureSet(block_norms=pseudo)))
    assert det.selected == 1
    np.testing.assert_array_equal(det.score(FeatureSet(block_norms=ind)), -5.0)


class _Stream:
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def batches(self, bs):
        for i in range(0, len(self.x), bs):
            yield self.x[i : i + bs]


def _tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3)).eval()


def test_odin_without_perturbation_is_msp():
    m = _tiny_model()
    x = RNG.normal(size=(6, 3, 4, 4)).astype(np.float32)
    det = detectors.create("odin[epsilon=0,temperature=1]").fit(FeatureSet(), Context(model=m))
    with torch.no_grad():
        logits = m(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(det.score(FeatureSet(images=_Stream(x))), -softmax(logits, 1).max(1), rtol=1e-6)
    # the perturbation raises the max softmax (at T=1 it moves against the CE gradient)
    pert = detectors.create("odin[epsilon=0.05,temperature=1]").fit(FeatureSet(), Context(model=m))
    assert np.all(pert.score(FeatureSet(images=_Stream(x))) <= -softmax(logits, 1).max(1) + 1e-9)


def _blocks(labels, rng, d=32):
    """Features with block k of 8 units active for class k; label 3 = the OOD block (units 24-31)."""
    x = np.abs(rng.normal(0.0, 0.5, (len(labels), d)))
    for i, k in enumerate(labels):
        x[i, 8 * k : 8 * k + 8] += 3.0
    return x.astype(np.float32)


@pytest.mark.parametrize("name", ["msp", "maxlogit", "energy", "react", "ash", "lhact", "knn", "mahalanobis", "vim"])
def test_separates_ood_samples(name):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 60)
    x, xt, ood = _blocks(y, rng), _blocks(y[::2], rng), _blocks(np.full(90, 3), rng)
    w = np.zeros((3, 32), np.float32)
    for k in range(3):
        w[k, 8 * k : 8 * k + 8] = 1.0
    head = LinearHead(w, np.zeros(3, np.float32))
    fs = lambda f: FeatureSet(features=f, logits=head(f))  # noqa: E731
    det = detectors.create(name).fit(FeatureSet(features=x, logits=head(x), labels=y), Context(head=head))
    s_in, s_out = det.score(fs(xt)), det.score(fs(ood))
    assert roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out]) > 0.9


class ToyDualEncoder:
    """A tiny deterministic dual encoder (implements :class:`tagood.core.types.DualEncoder`): texts map to
    fixed unit vectors seeded by their sha256, images (B,3,H,W) to a fixed random projection of their
    pixels, patches to projections of the image's 2x2 quadrants."""

    id = "toy-dual-encoder"
    weights_hash = "0"
    transform_id = "none"
    embed_dim = 8
    logit_scale = 100.0

    def preprocess(self, image):
        return np.zeros((3, 4, 4), np.float32)

    def _proj(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        p = np.random.default_rng(x.shape[1]).standard_normal((x.shape[1], self.embed_dim))
        e = x @ p + 1e-3
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)

    def encode_images(self, batch):
        return self._proj(batch)

    def patch_tokens(self, batch):
        b = np.asarray(batch, np.float32)
        h, w = b.shape[2] // 2, b.shape[3] // 2
        quads = [b[:, :, i * h : (i + 1) * h, j * w : (j + 1) * w] for i in range(2) for j in range(2)]
        return np.stack([self._proj(q) for q in quads], axis=1)

    def encode_texts(self, texts):
        out = [np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")).standard_normal(8)
               for t in texts]
        e = np.stack(out)
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def _full_featureset(n, rng, c=3, d=16, t=20, k=4, ntok=9):
    x = np.abs(rng.normal(size=(n, d))).astype(np.float32)
    head = _head(d, c)
    probs = softmax(rng.normal(size=(n, t)), 1)
    ids = np.argsort(-probs, 1)[:, :k]
    images = rng.normal(size=(n, 3, 4, 4)).astype(np.float32)
    enc = ToyDualEncoder()
    return FeatureSet(
        labels=np.arange(n) % c, features=x, logits=head(x),
        tokens=TokenSet.from_dense(rng.normal(size=(n, ntok, d)).astype(np.float32)),
        tag_probs=probs, tag_attention=TagAttention(ids, rng.random((n, k, ntok)).astype(np.float32)),
        block_norms=np.abs(rng.normal(size=(n, 5))) + 1, images=_Stream(images),
        image_embeds=enc.encode_images(images), patch_embeds=TokenSet.from_dense(enc.patch_tokens(images)),
    )


_WORDS = [f"word{i}" for i in range(60)]
#: Every registered detector: the inputs and the context it must declare, and options that make its fit quick
#: on the synthetic set. Explicit on purpose: a detector that cannot fit here fails the smoke test instead of
#: being skipped, and a new detector must be added to this table.
DETECTORS: dict[str, tuple[set[str], set[str], dict]] = {
    "msp": ({"logits"}, set(), {}),
    "maxlogit": ({"logits"}, set(), {}),
    "energy": ({"logits"}, set(), {}),
    "odin": ({"images"}, {"model"}, {}),
    "react": ({"features"}, {"head"}, {}),
    "ash": ({"features"}, {"head"}, {}),
    "lhact": ({"features"}, {"head"}, {}),
    "featurenorm": ({"block_norms"}, {"pseudo_ood"}, {}),
    "knn": ({"features"}, set(), {}),
    "mahalanobis": ({"features"}, set(), {}),
    "vim": ({"features"}, {"head"}, {}),
    "tagscore": ({"tokens", "tag_probs", "tag_attention"}, set(), {}),
    "cs": ({"tokens", "tag_probs", "tag_attention"}, set(), {}),  # trains nothing: no training options
    "ce+cs": ({"tokens", "tag_probs", "tag_attention"}, set(), {"epochs": 2}),
    "tagood": ({"tokens", "tag_probs", "tag_attention"}, set(), {"epochs": 2}),
    "mcm": ({"image_embeds"}, {"class_names", "dual_encoder"}, {}),
    "glmcm": ({"image_embeds", "patch_embeds"}, {"class_names", "dual_encoder"}, {}),
    "neglabel": ({"image_embeds"}, {"class_names", "dual_encoder"}, {"corpus": _WORDS, "n_neg": 20, "ngroup": 2}),
    "csp": ({"image_embeds"}, {"class_names", "dual_encoder"},
            {"nouns": _WORDS, "adjectives": [f"adj{i}" for i in range(30)], "ngroup": 2, "ratio": 0.5}),
    "adaneg": ({"image_embeds"}, {"class_names", "dual_encoder"}, {"corpus": _WORDS, "n_neg": 20, "ngroup": 2}),
    "locoop": ({"image_embeds", "patch_embeds"}, {"class_names", "dual_encoder"}, {"epochs": 1, "shots": 4}),
    "krnft": ({"image_embeds"}, {"class_names", "dual_encoder"},
              {"neg_words": _WORDS[:20], "epochs": 1, "shots": 4, "n_crops": 4, "k_in": 1, "k_out": 1}),
}
#: test-time detectors: a sample's score depends on the samples scored with it (AdaNeg's memory)
TEST_TIME = {"adaneg"}


def test_detector_table_lists_every_registered_detector():
    from tagood.core.types import DualEncoder

    assert set(DETECTORS) == set(detectors.available())
    assert isinstance(ToyDualEncoder(), DualEncoder)


def _rows(fs: FeatureSet, idx: np.ndarray) -> FeatureSet:
    """The samples ``idx`` of a synthetic feature set (every field it holds)."""
    def pick(v):
        if isinstance(v, TokenSet):
            return v.select(idx)
        if isinstance(v, TagAttention):
            return TagAttention(v.ids[idx], v.maps[idx])
        if isinstance(v, _Stream):
            return _Stream(v.x[idx])
        return v[idx]

    return FeatureSet(**{f: pick(v) for f, v in vars(fs).items()
                         if v is not None and f not in ("name", "extra", "paths", "chunks", "streamed")})


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_smoke(name):
    requires, context_requires, opts = DETECTORS[name]
    rng = np.random.default_rng(5)
    train, test = _full_featureset(60, rng), _full_featureset(11, rng)
    ctx = Context(head=_head(), model=_tiny_model(), pseudo_ood=_full_featureset(20, rng), class_names=["a", "b", "c"],
                  dual_encoder=ToyDualEncoder(), tag_names=[f"tag{i}" for i in range(20)])
    det = detectors.create(name, **opts)
    assert set(det.requires) == requires and set(det.context_requires) == context_requires, name
    assert det.fit(train, ctx) is det  # no skip: every input it declares is here
    s = det.score(test)
    assert s.dtype == np.float64 and s.shape == (11,) and np.isfinite(s).all()
    np.testing.assert_array_equal(s, det.score(test))  # deterministic
    if name in TEST_TIME:  # one batch: scores invariant to the order of its samples
        perm = np.random.default_rng(0).permutation(11)
        np.testing.assert_allclose(det.score(_rows(test, perm)), s[perm], rtol=1e-6, atol=1e-9)
    else:
        np.testing.assert_allclose(det.score(_rows(test, np.array([3]))), s[3:4], rtol=1e-5, atol=1e-6)  # batch independence


def test_unfitted_and_missing_inputs_are_clear_errors():
    from tagood.detectors.base import NotFittedError

    with pytest.raises(NotFittedError, match=r"knn is not fitted: call det.fit\(train\) first"):
        detectors.create("knn").score(np.zeros((2, 3)))
    np.testing.assert_array_equal(detectors.create("msp").score(np.zeros((2, 3))), [-1 / 3, -1 / 3])  # training-free
    with pytest.raises(ValueError, match="needs inputs"):
        detectors.create("knn").fit(FeatureSet(logits=np.zeros((3, 2))))
    with pytest.raises(ValueError, match="context"):
        detectors.create("vim").fit(FeatureSet(features=np.ones((3, 2))))
    with pytest.raises(KeyError, match="unknown detector"):
        detectors.create("nope")


def test_create_rejects_bad_options_before_any_work():
    with pytest.raises(ValueError, match=r"detector 'knn' has no option zz; its options: k, alpha"):
        detectors.create("knn[zz=1]")
    with pytest.raises(ValueError, match=r"option k is a number \(default 50\), got 'abc'"):
        detectors.create("knn[k=abc]")
    with pytest.raises(ValueError, match="unknown TagOOD options"):
        detectors.create("tagood[epochz=3]")
    with pytest.raises(KeyError, match="unknown detector 'nosuch'"):
        detectors.create("nosuch")
    assert detectors.create("react[percentile=95]").hparams["percentile"] == 95
    assert detectors.create("tagood[tau=0,per_class=1]").tau == 0  # an int where the default is a float or a word
