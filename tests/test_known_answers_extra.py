"""Known answers the mutation gate (``benchmarks/mutation.py``) found untested in the classic detectors: a saved and
re-loaded detector scores exactly as the fitted one (its saved state is complete and read back under the same names),
and FeatureNorm's NormRatio in float64 with its floor on the pseudo-OOD mean and its missing-input error."""

from __future__ import annotations

import numpy as np
import pytest

import tagood
from tagood.core.types import LinearHead
from tagood.detectors.base import ContextError
from tagood.detectors.featurenorm import norm_ratio


def _data(seed: int = 0) -> tuple[tagood.FeatureSet, tagood.FeatureSet, tagood.Context]:
    rng = np.random.default_rng(seed)
    d, sizes = 6, (5, 9, 14)
    y = np.repeat(np.arange(3), sizes)
    x = np.abs(rng.normal(0.0, 1.0, (len(y), d))) + y[:, None] * 0.5
    head = LinearHead(rng.normal(0.0, 0.7, (3, d)), np.array([0.4, -0.9, 1.3]))
    blocks = np.abs(rng.normal(1.0, 0.3, (len(y), 4)))
    pseudo = np.abs(rng.normal(1.0, 0.3, (20, 4))) * np.array([1.0, 0.5, 0.8, 1.0])
    train = tagood.FeatureSet(features=x, labels=y, logits=x @ head.weight.T + head.bias, block_norms=blocks)
    q = np.abs(rng.normal(0.5, 1.5, (8, d)))
    test = tagood.FeatureSet(features=q, logits=q @ head.weight.T + head.bias,
                             block_norms=np.abs(rng.normal(1.0, 0.5, (8, 4))))
    return train, test, tagood.Context(head=head, pseudo_ood=tagood.FeatureSet(block_norms=pseudo), seed=1)


@pytest.mark.parametrize("spec", ["msp", "maxlogit", "energy[temperature=2]", "knn[k=3]", "knn[k=2,alpha=0.5]",
                                  "mahalanobis", "vim[dim=3]", "ash[percentile=60,variant=s]", "react[percentile=80]",
                                  "lhact[low_percentile=20,high_percentile=80]", "featurenorm"])
def test_saved_and_loaded_detector_scores_the_same(spec: str, tmp_path) -> None:
    train, test, ctx = _data()
    det = tagood.create(spec).fit(train, ctx)
    want = det.score(test)
    det.save(tmp_path / "det")
    back = tagood.load(tmp_path / "det")
    np.testing.assert_array_equal(back.score(test), want)
    assert type(back) is type(det)


def test_featurenorm_norm_ratio_is_computed_in_float64() -> None:
    # float32 block norms whose float32 mean would lose the 1s next to 2**24 (float32 spacing there is 2)
    ind = np.array([[2.0**24, 3.0], [1.0, 3.0], [1.0, 3.0]], dtype=np.float32)
    pseudo = np.array([[3.0, 2.0**24], [3.0, 1.0], [3.0, 1.0], [3.0, 1.0]], dtype=np.float32)
    want = np.array([(2.0**24 + 2.0) / 3.0 / 3.0, 3.0 / ((2.0**24 + 3.0) / 4.0)])
    np.testing.assert_allclose(norm_ratio(ind, pseudo), want, rtol=1e-15)
    assert norm_ratio(ind, pseudo).dtype == np.float64


def test_featurenorm_norm_ratio_floor_is_tiny() -> None:
    # pseudo-OOD means below 1 divide as they are; only a zero mean is floored (at 1e-12)
    ind, pseudo = np.array([[0.3, 0.2, 5e-13]]), np.array([[0.5, 0.1, 0.0]])
    np.testing.assert_allclose(norm_ratio(ind, pseudo), [0.6, 2.0, 0.5], rtol=1e-12)


def test_featurenorm_without_pseudo_block_norms_is_a_context_error() -> None:
    train, _, _ = _data()
    for ctx in (tagood.Context(), tagood.Context(pseudo_ood=tagood.FeatureSet(features=np.ones((2, 6))))):
        with pytest.raises(ContextError, match="pseudo_ood"):
            tagood.create("featurenorm").fit(train, ctx)


def test_vim_residual_method_is_the_norm_outside_the_principal_space() -> None:
    """``ViM.residual``: ``||x - o||`` less its part in the top-``dim`` principal space of the IND features about the
    origin ``o = -W^+ b`` (Wang et al., CVPR 2022, Sec. 3), restated here with an SVD."""
    train, test, ctx = _data(3)
    x, q = train.features, test.features
    w, b = ctx.head.weight, ctx.head.bias
    o = -np.linalg.pinv(w) @ b
    p = np.linalg.svd(x - o, full_matrices=False)[2][:3]
    r = q - o
    want = np.sqrt((r * r).sum(1) - ((r @ p.T) ** 2).sum(1))
    det = tagood.create("vim[dim=3]").fit(train, ctx)
    np.testing.assert_allclose(det.residual(q), want, rtol=1e-9)


def test_lhact_thresholds_of_float32_features_are_float64_percentiles() -> None:
    """The cache holds float32 features; LHAct's per-unit percentiles (Yuan et al., ACM MM 2023) are taken in float64,
    as numpy's linear percentile of the float64 copy gives them."""
    rng = np.random.default_rng(5)
    x32 = (rng.random((23, 4)) * 3.7).astype(np.float32)
    _, _, ctx = _data()
    det = tagood.create("lhact[low_percentile=13,high_percentile=71]").fit(tagood.FeatureSet(features=x32),
                                                                          tagood.Context(head=LinearHead(
                                                                              ctx.head.weight[:, :4], ctx.head.bias)))
    x64 = x32.astype(np.float64)
    np.testing.assert_allclose(det.low, np.percentile(x64, 13, axis=0), rtol=1e-15)
    np.testing.assert_allclose(det.high, np.percentile(x64, 71, axis=0), rtol=1e-15)


def test_lhact_without_a_head_fits_one_on_the_training_labels() -> None:
    from tagood.detectors.head import fit_head

    train, test, _ = _data(4)
    own = tagood.create("lhact").fit(train, tagood.Context(seed=0))
    given = tagood.create("lhact").fit(train, tagood.Context(head=fit_head(train, seed=0), seed=0))
    np.testing.assert_array_equal(own.score(test), given.score(test))
