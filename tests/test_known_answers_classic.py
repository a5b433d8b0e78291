"""Known-answer tests of the classic (logit / feature) detectors: every score is checked against an
independent float64 computation written here from the method's paper, on hand-made inputs (IND heads
with non-zero biases, three or more classes of unequal sizes), for every option path, and for its sign
(higher = more OOD). No expected value is read from a detector's fitted state.

Where each formula comes from:

* MSP: Hendrycks & Gimpel, ICLR 2017, Sec. 2: confidence ``max_c softmax(f(x))_c``; score = its negative.
* MaxLogit: Hendrycks et al., ICML 2022, Sec. 3: ``max_c f_c(x)``; score = its negative.
* Energy: Liu et al., NeurIPS 2020, Eq. 5 (free energy ``E(x; f) = -T log sum_c e^{f_c(x)/T}``); score = ``E``.
* ODIN: Liang et al., ICLR 2018, Eq. 1 (temperature scaling ``S_i(x; T)``) and Eq. 2 (input preprocessing
  ``x~ = x - eps sign(-grad_x log S_yhat(x; T))``); score = ``-max_c S_c(x~; T)``. The step is taken on the
  normalised input, so it is ``eps / std`` per channel (the authors' code).
* ReAct: Sun et al., NeurIPS 2021, Eq. 1-2: ``h_bar = min(h, c)``, ``c`` the p-th percentile of the IND
  activations; the energy of ``W h_bar + b``.
* ASH: Djurisic et al., ICLR 2023, Sec. 3 (Algorithms ASH-P, ASH-B, ASH-S): keep the top ``100 - p`` percent of
  a sample's activations; ASH-B sets them to ``s1 / k``; ASH-S multiplies them by ``exp(s1 / s2)``; energy of
  the head's logits of the shaped features.
* LHAct: Yuan et al., ACM MM 2023 (as the library reads it, see ``tagood.detectors.lhact``): per-unit clip at
  the high percentile, zero below the low percentile, energy through the head.
* KNN: Sun et al., ICML 2022, Sec. 3 (Eq. 2 and Algorithm 1): ``z = x / ||x||``, score = ``||z - z_(k)||`` (the
  k-th nearest normalised IND training feature); with ``alpha < 1`` a random ``alpha`` share of the bank.
* Mahalanobis: Lee et al., NeurIPS 2018, Eq. 1-2: class means ``mu_c = mean_{y_i = c} x_i``, tied covariance
  ``Sigma = 1/N sum_c sum_{y_i = c} (x_i - mu_c)(x_i - mu_c)^T``; ``M(x) = max_c -(x - mu_c)^T Sigma^-1 (x -
  mu_c)``; score = ``-M(x)``.
* ViM: Wang et al., CVPR 2022, Sec. 3 (Eq. 3-8) and its code: origin ``o = -(W^T)^+ b``, principal space of
  ``x - o`` (top ``D`` eigenvectors of the centred covariance), residual ``x^{P perp}``, ``alpha = mean max
  logit / mean ||x^{P perp}||`` on IND train; score ``alpha ||x^{P perp}|| - log sum_c e^{f_c(x)}``, the log-odds
  of the paper's ViM score (the softmax probability of the virtual logit ``alpha ||x^{P perp}||``), so higher = more
  OOD as in the paper; ``D``: 1000 for N >= 2048, 512 for N >= 768, else N / 2 (the code).
* FeatureNorm: Yu et al., CVPR 2023, Eq. 2-3: NormRatio = mean FeatureNorm on IND / on jigsaw pseudo-OOD; the
  block with the largest ratio; score = ``-FeatureNorm``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tagood
from tagood.core.types import LinearHead
from tagood.detectors import ash, energy, featurenorm, knn, lhact, mahalanobis, maxlogit, msp, odin, react, vim


# -- independent float64 re-statements ---------------------------------------------------------------------------
def lse(z: np.ndarray) -> np.ndarray:
    """log sum_c exp(z_c) per row, written out (max-shifted)."""
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def head3(d: int, seed: int = 0) -> LinearHead:
    """A 3-class head with non-zero biases (float64)."""
    rng = np.random.default_rng(seed)
    return LinearHead(rng.normal(0.0, 0.7, (3, d)), np.array([0.4, -0.9, 1.3]))


def logits_of(head: LinearHead, x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64) @ np.asarray(head.weight, np.float64).T + np.asarray(head.bias, np.float64)


def labelled(seed: int = 0, d: int = 6, sizes: tuple[int, ...] = (7, 12, 21)) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative features of three classes of unequal sizes, each class with its own mean."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c, n in enumerate(sizes):
        mu = np.full(d, 0.5)
        mu[2 * c % d] += 3.0
        mu[(2 * c + 1) % d] += 1.5
        xs.append(np.abs(rng.normal(mu, 0.8, (n, d))))
        ys.append(np.full(n, c))
    return np.concatenate(xs), np.concatenate(ys)


def linear_percentile(values: np.ndarray, p: float) -> float:
    """The p-th percentile with linear interpolation between order statistics (rank (n - 1) p / 100)."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    r = (len(v) - 1) * p / 100.0
    lo = int(np.floor(r))
    hi = min(lo + 1, len(v) - 1)
    return float(v[lo] + (r - lo) * (v[hi] - v[lo]))


# -- MSP, MaxLogit, Energy ----------------------------------------------------------------------------------------
def test_logit_scores_closed_form_points() -> None:
    z = np.array([[0.0, 0.0, 0.0], [np.log(2.0), 0.0, 0.0], [5.0, 5.0, np.log(3.0) + 5.0], [-2.0, 1.0, -7.0]])
    fs = tagood.FeatureSet(logits=z)
    # uniform -> 1/3; [2, 1, 1] / 4 -> 1/2; [1, 1, 3] / 5 -> 3/5
    want_msp = [-1 / 3, -0.5, -0.6, -np.e**1 / (np.e**-2 + np.e**1 + np.e**-7)]
    np.testing.assert_allclose(tagood.create("msp").score(fs), want_msp, rtol=1e-13)
    np.testing.assert_allclose(msp.score(z), want_msp, rtol=1e-13)
    np.testing.assert_allclose(tagood.create("maxlogit").score(fs), [0.0, -np.log(2.0), -np.log(3.0) - 5.0, -1.0],
                               rtol=1e-13, atol=1e-15)
    want_e = [-np.log(3.0), -np.log(4.0), -(5.0 + np.log(5.0)), -np.log(np.e**-2 + np.e + np.e**-7)]
    np.testing.assert_allclose(tagood.create("energy").score(fs), want_e, rtol=1e-13)
    np.testing.assert_allclose(energy.score(z), want_e, rtol=1e-13)
    # temperature T: -T log sum exp(z / T); at T = 2 on [log 2, 0, 0]: -2 log(sqrt 2 + 2)
    got = tagood.create("energy[temperature=2]").score(fs)
    np.testing.assert_allclose(got[:2], [-2 * np.log(3.0), -2 * np.log(np.sqrt(2.0) + 2.0)], rtol=1e-13)
    np.testing.assert_allclose(energy.score(z, temperature=0.5), -0.5 * lse(z / 0.5), rtol=1e-13)


def test_logit_scores_match_paper_formulas_and_sign() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, (25, 4))
    fs = tagood.FeatureSet(logits=z)
    p = np.exp(z - lse(z)[:, None])
    np.testing.assert_allclose(tagood.create("msp").score(fs), -p.max(axis=1), rtol=1e-12)
    np.testing.assert_allclose(maxlogit.score(z), -z.max(axis=1), rtol=1e-13)
    for t in (1.0, 3.0, 0.25):
        np.testing.assert_allclose(tagood.create("energy", temperature=t).score(fs), -t * lse(z / t), rtol=1e-12)
    # sign: a confident (IND-like) row scores lower than a flat (OOD-like) one for each of them
    conf, flat = np.array([[9.0, 0.0, 0.0, 0.0]]), np.array([[1.0, 1.0, 1.0, 1.0]])
    for name in ("msp", "maxlogit", "energy"):
        det = tagood.create(name)
        assert det.score(conf)[0] < det.score(flat)[0], name


# -- ODIN ---------------------------------------------------------------------------------------------------------
class Linear(torch.nn.Module):
    """images (B, 3, 2, 2) -> W flat(x) + b, 3 classes (float32 torch, like a real model)."""

    def __init__(self, w: np.ndarray, b: np.ndarray, pixel_std: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            self.lin.weight.copy_(torch.as_tensor(w))
            self.lin.bias.copy_(torch.as_tensor(b))
        if pixel_std is not None:
            self.pixel_std = pixel_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


class Images:
    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, bs: int):
        for i in range(0, len(self.x), bs):
            yield self.x[i : i + bs]


def odin_by_hand(x: np.ndarray, w: np.ndarray, b: np.ndarray, t: float, eps: float, std: np.ndarray) -> np.ndarray:
    """ODIN (Liang et al., Eq. 1-2) for a linear model, in float64: the gradient of -log S_yhat(x; T) w.r.t. x is
    W^T (softmax(f/T) - onehot(yhat)) / T; x~ = x - (eps / std) sign(that gradient); score -max softmax(f(x~)/T)."""
    xf = x.reshape(len(x), -1).astype(np.float64)
    f = xf @ w.T + b
    s = np.exp(f / t - lse(f / t)[:, None])
    onehot = np.eye(w.shape[0])[f.argmax(axis=1)]
    grad = (s - onehot) @ w / t
    step = np.broadcast_to((eps / std).reshape(1, -1, 1, 1), x.shape).reshape(len(x), -1)
    x2 = xf - step * np.sign(grad)
    f2 = (x2 @ w.T + b) / t
    return -np.exp(f2 - lse(f2)[:, None]).max(axis=1)


@pytest.mark.parametrize("t,eps,std", [(1.0, 0.0, None), (1.0, 0.05, None), (2.0, 0.1, 0.3),
                                       (1000.0, 0.0014, None), (1.5, 0.08, (0.2, 0.5, 1.0))])
def test_odin_matches_temperature_and_perturbation(t, eps, std) -> None:
    rng = np.random.default_rng(5)
    w = rng.normal(0, 1, (3, 12)).astype(np.float32)
    b = np.array([0.5, -1.0, 0.25], np.float32)
    x = rng.normal(0, 1, (7, 3, 2, 2)).astype(np.float32)
    opts = {"temperature": t, "epsilon": eps, "batch_size": 3}
    if std is not None:
        opts["pixel_std"] = std if isinstance(std, float) else list(std)
    det = tagood.create("odin", **opts).fit(tagood.FeatureSet(), tagood.Context(model=Linear(w, b)))
    got = det.score(tagood.FeatureSet(images=Images(x)))
    s = np.atleast_1d(np.asarray(128.0 / 255.0 if std is None else std, np.float64))
    want = odin_by_hand(x, w.astype(np.float64), b.astype(np.float64), t, eps, np.broadcast_to(s, (3,)))
    # at T = 1000 every score is near -1/3: compare the distance from it
    np.testing.assert_allclose(got + 1 / 3, want + 1 / 3, rtol=2e-5, atol=1e-12)
    np.testing.assert_allclose(odin.score(x, Linear(w, b), t, eps, pixel_std=std, batch_size=4), got, rtol=1e-6)


def test_odin_uses_the_std_the_model_declares_and_its_sign() -> None:
    rng = np.random.default_rng(6)
    w = rng.normal(0, 1, (3, 12)).astype(np.float32)
    b = np.array([-0.3, 0.8, 0.1], np.float32)
    x = rng.normal(0, 1, (5, 3, 2, 2)).astype(np.float32)
    std = (0.25, 0.4, 0.1)
    det = tagood.create("odin[temperature=1,epsilon=0.02]").fit(tagood.FeatureSet(), tagood.Context(model=Linear(w, b, std)))
    want = odin_by_hand(x, w.astype(np.float64), b.astype(np.float64), 1.0, 0.02, np.array(std))
    np.testing.assert_allclose(det.score(tagood.FeatureSet(images=Images(x))), want, rtol=2e-6)
    # the perturbation moves each image towards its predicted class: the score only goes down (more IND)
    plain = tagood.create("odin[temperature=1,epsilon=0]").fit(tagood.FeatureSet(), tagood.Context(model=Linear(w, b, std)))
    assert np.all(det.score(tagood.FeatureSet(images=Images(x))) < plain.score(tagood.FeatureSet(images=Images(x))))


# -- ReAct --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [90.0, 50.0, 37.5, 100.0])
def test_react_clip_and_score(p) -> None:
    x, y = labelled(1)
    head = head3(x.shape[1], 1)
    det = tagood.create("react", percentile=p).fit(tagood.FeatureSet(features=x, labels=y), tagood.Context(head=head))
    c = linear_percentile(x, p)
    assert det.threshold == pytest.approx(c, rel=1e-13)
    q = np.abs(np.random.default_rng(2).normal(1.5, 2.0, (9, x.shape[1])))
    want = -lse(logits_of(head, np.minimum(q, c)))
    np.testing.assert_allclose(det.score(tagood.FeatureSet(features=q)), want, rtol=1e-12)
    np.testing.assert_allclose(react.score(q, head, c), want, rtol=1e-12)


def test_react_closed_form_values() -> None:
    """Training activations 0..9 (one unit): the 90th percentile is 8.1 and the 50th 4.5; a 1-unit head."""
    train = np.arange(10.0)[:, None]
    head = LinearHead(np.array([[1.0], [-1.0], [0.5]]), np.array([0.0, 2.0, -1.0]))
    det = tagood.create("react").fit(tagood.FeatureSet(features=train), tagood.Context(head=head))
    assert det.threshold == pytest.approx(8.1, abs=1e-12)
    s = det.score(tagood.FeatureSet(features=np.array([[20.0], [3.0]])))
    np.testing.assert_allclose(s, [-np.log(np.exp(8.1) + np.exp(-6.1) + np.exp(3.05)),
                                   -np.log(np.exp(3.0) + np.exp(-1.0) + np.exp(0.5))], rtol=1e-13)
    assert tagood.create("react[percentile=50]").fit(train, tagood.Context(head=head)).threshold == pytest.approx(4.5)


# -- ASH ----------------------------------------------------------------------------------------------------------
def ash_by_hand(x: np.ndarray, p: float, variant: str) -> np.ndarray:
    """ASH-P / -B / -S (Djurisic et al., Sec. 3) one row at a time: keep the k = D - round(D p / 100) largest
    (distinct, positive) activations."""
    out = np.zeros_like(x, dtype=np.float64)
    d = x.shape[1]
    k = d - int(round(d * p / 100.0))  # Python's round: half to even, as np.round
    for i, row in enumerate(np.asarray(x, np.float64)):
        top = np.argsort(-row)[:k]
        s1 = row.sum()
        if variant == "p":
            out[i, top] = row[top]
        elif variant == "b":
            out[i, top] = s1 / k
        else:
            out[i, top] = row[top] * np.exp(s1 / row[top].sum())
    return out


@pytest.mark.parametrize("variant", ["s", "b", "p"])
@pytest.mark.parametrize("p,d,k", [(90.0, 20, 2), (65.0, 20, 7), (0.0, 20, 20), (80.0, 7, 1), (50.0, 7, 3),
                                   (30.0, 7, 5), (50.0, 5, 3)])
def test_ash_variants_match_the_paper(variant, p, d, k) -> None:
    """k = D - round(D p / 100) kept, as the paper's code (np.round, half to even): D = 7 at 80% prunes 6 (5.6), at
    50% 4 (3.5), at 30% 2 (2.1); D = 5 at 50% prunes 2 (2.5)."""
    rng = np.random.default_rng(7)
    x = rng.random((6, d)) * 2.0 + 0.01  # positive, no ties
    head = head3(d, 2)
    det = tagood.create("ash", percentile=p, variant=variant).fit(tagood.FeatureSet(features=x), tagood.Context(head=head))
    shaped = ash_by_hand(x, p, variant)
    assert ((shaped != 0).sum(axis=1) == k).all()
    np.testing.assert_allclose(ash.ash_shape(x, p, variant), shaped, rtol=1e-13)
    want = -lse(logits_of(head, shaped))
    np.testing.assert_allclose(det.score(tagood.FeatureSet(features=x)), want, rtol=1e-12)
    np.testing.assert_allclose(ash.score(x, head, p, variant), want, rtol=1e-12)


def test_ash_closed_form_row() -> None:
    """Row [4, 3, 2, 1, 0.5] (s1 = 10.5), percentile 60 -> k = 2 kept: 4 and 3 (s2 = 7)."""
    x = np.array([[4.0, 3.0, 2.0, 1.0, 0.5]])
    np.testing.assert_allclose(ash.ash_shape(x, 60, "p"), [[4.0, 3.0, 0, 0, 0]])
    np.testing.assert_allclose(ash.ash_shape(x, 60, "b"), [[5.25, 5.25, 0, 0, 0]], rtol=1e-15)
    np.testing.assert_allclose(ash.ash_shape(x, 60, "s"), [[4.0 * np.exp(1.5), 3.0 * np.exp(1.5), 0, 0, 0]], rtol=1e-14)
    # percentile 80 -> k = 1: only the 4 is kept
    np.testing.assert_allclose(ash.ash_shape(x, 80, "b"), [[10.5, 0, 0, 0, 0]], rtol=1e-15)
    np.testing.assert_allclose(ash.ash_shape(x, 80, "s"), [[4.0 * np.exp(10.5 / 4.0), 0, 0, 0, 0]], rtol=1e-14)
    head = LinearHead(np.array([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 1.0], [0, 0, 1.0, 0, 0]]), np.array([0.5, -0.5, 2.0]))
    det = tagood.create("ash[percentile=60,variant=b]").fit(x, tagood.Context(head=head))
    assert det.score(x)[0] == pytest.approx(-np.log(np.exp(5.75) + np.exp(4.75) + np.exp(2.0)), rel=1e-13)


# -- LHAct --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("low,high", [(10.0, 90.0), (25.0, 60.0), (0.0, 100.0)])
def test_lhact_per_unit_thresholds_and_score(low, high) -> None:
    x, y = labelled(4)
    head = head3(x.shape[1], 4)
    det = tagood.create("lhact", low_percentile=low, high_percentile=high).fit(
        tagood.FeatureSet(features=x, labels=y), tagood.Context(head=head))
    lo = np.array([linear_percentile(x[:, j], low) for j in range(x.shape[1])])
    hi = np.array([linear_percentile(x[:, j], high) for j in range(x.shape[1])])
    q = np.abs(np.random.default_rng(8).normal(1.5, 2.0, (11, x.shape[1])))
    q[0] = lo + 1e-9 * (1.0 + np.abs(lo))  # just above the low threshold: kept
    q[2] = lo - 1e-9 * (1.0 + np.abs(lo))  # just below it: zeroed
    q[1] = hi + 5.0  # above every cap
    rect = np.minimum(q, hi)
    rect[rect < lo] = 0.0
    want = -lse(logits_of(head, rect))
    np.testing.assert_allclose(det.score(tagood.FeatureSet(features=q)), want, rtol=1e-12)
    np.testing.assert_allclose(lhact.score(q, head, lo, hi), want, rtol=1e-12)


def test_lhact_closed_form_thresholds() -> None:
    """Units [0..4], [10..50], constant 5: the 25th / 75th percentiles are exactly [1, 20, 5] / [3, 40, 5]. An
    activation equal to its low threshold is kept (only values *below* it are zeroed); above the high one, capped."""
    train = np.stack([np.arange(5.0), 10.0 * np.arange(1.0, 6.0), np.full(5, 5.0)], axis=1)
    head = LinearHead(np.array([[1.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.5, 0.0, 1.0]]), np.array([0.5, -1.0, -2.0]))
    det = tagood.create("lhact[low_percentile=25,high_percentile=75]").fit(train, tagood.Context(head=head))
    x = np.array([[1.0, 20.0, 5.0], [0.5, 45.0, 4.0], [3.5, 19.0, 6.0]])
    rect = np.array([[1.0, 20.0, 5.0], [0.0, 40.0, 0.0], [3.0, 0.0, 5.0]])
    np.testing.assert_array_equal(det.rectify(x), rect)
    logits = np.array([[1.5, 1.0, 3.5], [0.5, 3.0, -2.0], [3.5, -1.0, 4.5]])
    np.testing.assert_allclose(det.score(x), -lse(logits), rtol=1e-13)


# -- KNN ----------------------------------------------------------------------------------------------------------
def circle(angles_deg: np.ndarray, radii: np.ndarray) -> np.ndarray:
    a = np.deg2rad(angles_deg)
    return np.stack([np.cos(a), np.sin(a)], axis=1) * radii[:, None]


def test_knn_closed_form_on_the_circle() -> None:
    """Training points at 0, 10, 30, 60, 100 and 150 degrees with various norms; the distance between unit vectors
    at angle delta is 2 sin(delta / 2)."""
    train = circle(np.array([0.0, 10.0, 30.0, 60.0, 100.0, 150.0]), np.array([1.0, 3.0, 0.5, 2.0, 7.0, 1.5]))
    q = circle(np.array([20.0, 100.0, 270.0]), np.array([4.0, 0.1, 1.0]))

    def chord(deg: float) -> float:
        return 2.0 * np.sin(np.deg2rad(deg) / 2.0)

    # sorted angular distances to the bank: 20 deg -> 10, 10, 20, 40; 100 deg -> 0, 40, 50, 70;
    # 270 deg -> 90 (to 0), 100 (to 10), 120 (to 30 and 150)
    want = {1: [chord(10), 0.0, chord(90)], 2: [chord(10), chord(40), chord(100)], 3: [chord(20), chord(50), chord(120)]}
    for k, w in want.items():
        det = tagood.create("knn", k=k).fit(tagood.FeatureSet(features=train))
        np.testing.assert_allclose(det.score(tagood.FeatureSet(features=q)), w, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(knn.score(q, knn.make_bank(train, k), k), w, rtol=1e-5, atol=1e-3)


def test_knn_matches_brute_force_and_sign() -> None:
    x, _ = labelled(9, d=8)
    q = np.abs(np.random.default_rng(10).normal(1.0, 2.0, (13, 8)))
    z, qz = x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    dist = np.sqrt(((qz[:, None, :] - z[None, :, :]) ** 2).sum(-1))
    for k in (1, 4, 17):
        det = tagood.create("knn", k=k).fit(x)
        np.testing.assert_allclose(det.score(q), np.sort(dist, axis=1)[:, k - 1], rtol=1e-5, atol=1e-5)
    # a training point scores 0 at k = 1; a point opposite all training data scores more
    det = tagood.create("knn[k=1]").fit(x)
    s = det.score(np.stack([x[3] * 2.5, -x.mean(axis=0)]))
    assert s[0] == pytest.approx(0.0, abs=1e-3) and s[1] > 1.0


@pytest.mark.parametrize("alpha,k,n_bank", [(0.25, 3, 10), (0.5, 2, 20), (0.01, 3, 3)])
def test_knn_subsampled_bank(alpha, k, n_bank) -> None:
    """alpha < 1 (the paper's ImageNet setting): the bank is a seeded random max(k, int(N alpha)) of the N
    normalised training features, without repeats; the score is the k-th nearest distance in that bank, never below
    the full-bank score (a subset's k-th neighbour is no nearer)."""
    rng = np.random.default_rng(11)
    x = np.abs(rng.normal(1.0, 1.0, (40, 5)))
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = np.abs(rng.normal(1.0, 1.5, (15, 5)))
    qz = q / np.linalg.norm(q, axis=1, keepdims=True)
    det = tagood.create("knn", k=k, alpha=alpha).fit(tagood.FeatureSet(features=x), tagood.Context(seed=3))
    bank = det.bank.astype(np.float64)
    assert bank.shape == (n_bank, 5)
    # every bank row is one training row, each at most once
    match = np.abs(bank[:, None, :] - z[None, :, :]).max(-1) < 1e-6
    rows = match.argmax(axis=1)
    assert match.any(axis=1).all() and len(set(rows.tolist())) == n_bank
    sub = np.sqrt(((qz[:, None, :] - z[rows][None, :, :]) ** 2).sum(-1))
    got = det.score(q)
    np.testing.assert_allclose(got, np.sort(sub, axis=1)[:, k - 1], rtol=1e-5, atol=1e-5)
    full = np.sort(np.sqrt(((qz[:, None, :] - z[None, :, :]) ** 2).sum(-1)), axis=1)[:, k - 1]
    assert np.all(got >= full - 1e-6) and np.any(got > full + 1e-4)
    # seeded: the same seed gives the same bank, another seed another one
    again = tagood.create("knn", k=k, alpha=alpha).fit(tagood.FeatureSet(features=x), tagood.Context(seed=3))
    np.testing.assert_array_equal(again.bank, det.bank)
    other = tagood.create("knn", k=k, alpha=alpha).fit(tagood.FeatureSet(features=x), tagood.Context(seed=4))
    assert not np.array_equal(np.sort(other.bank, axis=0), np.sort(det.bank, axis=0))
    np.testing.assert_array_equal(knn.make_bank(x, k, alpha, seed=3), det.bank)


# -- Mahalanobis --------------------------------------------------------------------------------------------------
def gaussians_by_hand(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lee et al., Eq. 1: class means and the inverse of the tied (pooled, 1/N) covariance, from the raw data."""
    classes = sorted(set(y[y >= 0].tolist()))
    means = np.array([[np.mean([x[i, j] for i in range(len(x)) if y[i] == c]) for j in range(x.shape[1])]
                      for c in classes])
    d = x.shape[1]
    cov = np.zeros((d, d))
    n = 0
    for i in range(len(x)):
        if y[i] < 0:
            continue
        r = x[i] - means[classes.index(int(y[i]))]
        cov += np.outer(r, r)
        n += 1
    return means, np.linalg.inv(cov / n)


def test_mahalanobis_known_answer() -> None:
    x, y = labelled(12, d=5, sizes=(6, 15, 30))
    # unlabelled (-1) samples are left out of the fit
    x_all = np.concatenate([x, np.full((4, 5), 50.0)])
    y_all = np.concatenate([y, -np.ones(4, int)])
    det = tagood.create("mahalanobis").fit(tagood.FeatureSet(features=x_all, labels=y_all))
    means, prec = gaussians_by_hand(x, y)
    q = np.concatenate([means, np.abs(np.random.default_rng(13).normal(2.0, 3.0, (8, 5)))])
    want = np.array([min((v - m) @ prec @ (v - m) for m in means) for v in q])
    got = det.score(tagood.FeatureSet(features=q))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got[:3], 0.0, atol=1e-9)  # each class mean is at distance 0
    np.testing.assert_allclose(mahalanobis.score(q, *mahalanobis.fit_gaussians(x, y)), want, rtol=1e-9, atol=1e-9)
    # sign: farther from every class = higher
    assert det.score(means[1:2] + 10.0)[0] > det.score(means[1:2] + 1.0)[0] > 0


def test_mahalanobis_one_dimension_closed_form() -> None:
    """1-D, three classes at 0 (n=2: -1, 1), 10 (n=3: 9, 10, 11), 20 (n=1): pooled variance (2 + 2 + 0) / 6 = 2/3."""
    x = np.array([-1.0, 1.0, 9.0, 10.0, 11.0, 20.0])[:, None]
    y = np.array([0, 0, 1, 1, 1, 2])
    det = tagood.create("mahalanobis").fit(tagood.FeatureSet(features=x, labels=y))
    got = det.score(np.array([[0.0], [4.0], [14.0], [30.0]]))
    np.testing.assert_allclose(got, [0.0, 16.0 * 1.5, 16.0 * 1.5, 100.0 * 1.5], rtol=1e-12, atol=1e-12)


# -- ViM ----------------------------------------------------------------------------------------------------------
def vim_by_hand(train: np.ndarray, head: LinearHead, dim: int, q: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """ViM (Wang et al., Sec. 3) from the paper, with an SVD instead of an eigendecomposition: o = -(W)^+ b as the
    minimum-norm solution of W o = -b; the principal space = top ``dim`` right singular vectors of (X - o); the
    residual norm = sqrt(||x - o||^2 - ||P (x - o)||^2); alpha = mean max logit / mean residual (IND train)."""
    w, b = np.asarray(head.weight, np.float64), np.asarray(head.bias, np.float64)
    o = -w.T @ np.linalg.solve(w @ w.T, b)
    _, _, vt = np.linalg.svd(train - o, full_matrices=False)
    p = vt[:dim]

    def res(v: np.ndarray) -> np.ndarray:
        r = v - o
        return np.sqrt(np.maximum((r * r).sum(1) - ((r @ p.T) ** 2).sum(1), 0.0))

    alpha = logits_of(head, train).max(axis=1).mean() / res(train).mean()
    return o, alpha, alpha * res(q) - lse(logits_of(head, q))


@pytest.mark.parametrize("dim", [2, 4, None])
def test_vim_known_answer(dim) -> None:
    x, y = labelled(14, d=8, sizes=(9, 14, 25))
    head = head3(8, 14)
    det = tagood.create("vim", dim=dim).fit(tagood.FeatureSet(features=x, labels=y), tagood.Context(head=head))
    d = 4 if dim is None else dim  # the paper's rule for N < 768: N / 2
    assert det.d == d and det.ns.shape == (8, 8 - d)
    q = np.abs(np.random.default_rng(15).normal(1.0, 2.5, (10, 8)))
    o, alpha, want = vim_by_hand(x, head, d, q)
    np.testing.assert_allclose(det.u, o, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(logits_of(head, o[None]), 0.0, atol=1e-12)  # the origin is where the logits vanish
    assert det.alpha == pytest.approx(alpha, rel=1e-10)
    np.testing.assert_allclose(det.score(tagood.FeatureSet(features=q)), want, rtol=1e-9)
    u, ns, a, _ = vim.fit_subspace(x, head, d)
    np.testing.assert_allclose(vim.score(q, head, u, ns, a), want, rtol=1e-9)


def test_vim_sign_residual_and_energy() -> None:
    """Moving along a residual direction by t adds alpha (||r_b + t r|| - ||r_b||) minus the energy change: the
    score rises with the distance from the principal space (more OOD) and falls with a larger log-sum-exp."""
    x, y = labelled(16, d=6)
    head = head3(6, 16)
    det = tagood.create("vim[dim=2]").fit(tagood.FeatureSet(features=x, labels=y), tagood.Context(head=head))
    o, alpha, _ = vim_by_hand(x, head, 2, x[:1])
    _, _, vt = np.linalg.svd(x - o, full_matrices=False)
    r = vt[-1]  # a residual direction (orthogonal to the principal space)
    base = x.mean(axis=0)
    rb = (base - o) - ((base - o) @ vt[:2].T) @ vt[:2]
    for t in (0.5, 2.0, 8.0):
        pts = np.stack([base, base + t * r])
        s = det.score(pts)
        de = lse(logits_of(head, pts[1:]))[0] - lse(logits_of(head, pts[:1]))[0]
        want = alpha * (np.linalg.norm(rb + t * r) - np.linalg.norm(rb)) - de
        assert s[1] - s[0] == pytest.approx(want, rel=1e-8)
    # far enough off the principal space, the residual term wins: more OOD
    assert s[1] > s[0]
    # with the residual fixed, a larger log-sum-exp lowers the score exactly by its increase
    shift = np.linalg.lstsq(np.asarray(head.weight), np.ones(3), rcond=None)[0]  # raises every logit by 1
    shift_p = shift - vt[2:].T @ (vt[2:] @ shift)  # within the principal space: residual unchanged
    s2 = det.score(np.stack([base, base + shift_p]))
    de2 = lse(logits_of(head, (base + shift_p)[None]))[0] - lse(logits_of(head, base[None]))[0]
    assert s2[1] - s2[0] == pytest.approx(-de2, rel=1e-8, abs=1e-10)


def test_vim_dimension_rule() -> None:
    """The principal dimension of the paper's code: 1000 for features of 2048+ dims, 512 for 768+, else half."""
    assert [vim.default_dim(n) for n in (4096, 2048, 2047, 1280, 768, 767, 512, 7)] == [1000, 1000, 512, 512, 512, 383,
                                                                                         256, 3]
    rng = np.random.default_rng(17)
    x = np.abs(rng.normal(0.0, 1.0, (30, 6))) + np.linspace(0.0, 1.0, 6)
    head = LinearHead(rng.normal(0, 0.5, (3, 6)), np.array([0.2, -0.1, 0.3]))
    # a dim at or above the feature width is clamped to width - 1 (one residual direction left)
    small = tagood.create("vim[dim=50]").fit(tagood.FeatureSet(features=x), tagood.Context(head=head))
    assert small.d == 5 and small.ns.shape == (6, 1)
    np.testing.assert_allclose(small.score(x[:4]), vim_by_hand(x, head, 5, x[:4])[2], rtol=1e-9)


# -- FeatureNorm --------------------------------------------------------------------------------------------------
def test_featurenorm_norm_ratio_selection_and_score() -> None:
    ind = np.array([[1.0, 4.0, 3.0, 2.0], [3.0, 6.0, 5.0, 2.0], [2.0, 5.0, 4.0, 2.0]])  # means 2, 5, 4, 2
    pseudo = np.array([[2.0, 4.0, 1.0, 1.0], [2.0, 6.0, 2.0, 3.0]])  # means 2, 5, 1.5, 2
    ctx = tagood.Context(pseudo_ood=tagood.FeatureSet(block_norms=pseudo))
    det = tagood.create("featurenorm").fit(tagood.FeatureSet(block_norms=ind), ctx)
    np.testing.assert_allclose(det.norm_ratio, [1.0, 1.0, 4.0 / 1.5, 1.0], rtol=1e-14)
    np.testing.assert_allclose(featurenorm.norm_ratio(ind, pseudo), [1.0, 1.0, 4.0 / 1.5, 1.0], rtol=1e-14)
    assert det.selected == 2
    test = np.array([[9.0, 8.0, 7.0, 6.0], [0.5, 0.0, 0.25, 3.0]])
    np.testing.assert_array_equal(det.score(tagood.FeatureSet(block_norms=test)), [-7.0, -0.25])
    forced = tagood.create("featurenorm[block=3]").fit(tagood.FeatureSet(block_norms=ind), ctx)
    np.testing.assert_array_equal(forced.score(tagood.FeatureSet(block_norms=test)), [-6.0, -3.0])
    np.testing.assert_array_equal(featurenorm.score(test, 0), [-9.0, -0.5])
    # sign: a larger feature norm (IND-like) scores lower
    assert det.score(np.array([[0, 0, 10.0, 0]]))[0] < det.score(np.array([[0, 0, 1.0, 0]]))[0]
