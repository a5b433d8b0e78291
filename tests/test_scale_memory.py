"""Memory that does not grow with N x classes on the paths an ImageNet-size run takes: the IND head's loss in row
chunks, and (CE)+CS's centres from the projector's features without its (N, C) logits."""

from __future__ import annotations

import tracemalloc

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tagood.detectors.head as head_mod
from tagood.core.types import TokenSet
from tagood.detectors.tagood.projector import Projector
from tagood.detectors.tagood.train import embed, embed_features


def _data(n: int = 1200, c: int = 12, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = np.arange(n) % c
    return (rng.normal(size=(n, d)) + 2.0 * np.eye(c, d)[y]).astype(np.float32), y


def test_head_fit_in_row_chunks_matches_one_pass_and_never_holds_all_logits(monkeypatch):
    x, y = _data()
    one = head_mod.fit_linear_head(x, y, epochs=60)
    seen: list[int] = []
    ce = torch.nn.functional.cross_entropy

    def counting(logits, *a, **k):
        seen.append(int(logits.numel()))
        return ce(logits, *a, **k)

    monkeypatch.setattr(head_mod, "HEAD_CHUNK_ELEMENTS", 2000)  # 1200 x 12 logits: chunks of 166 rows
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", counting)
    chunked = head_mod.fit_linear_head(x, y, epochs=60)
    assert seen and max(seen) <= 2000 < len(x) * 12
    # the same loss and gradient summed in another order: float32 rounding apart, the same optimum
    np.testing.assert_allclose(chunked.weight, one.weight, rtol=0, atol=2e-3)
    np.testing.assert_allclose(chunked.bias, one.bias, rtol=0, atol=2e-3)
    assert (chunked(x).argmax(1) == one(x).argmax(1)).mean() > 0.99


def test_head_below_the_limit_is_one_pass(monkeypatch):
    x, y = _data(300, 3)
    seen: list[int] = []
    ce = torch.nn.functional.cross_entropy

    def counting(logits, *a, **k):
        seen.append(int(logits.numel()))
        return ce(logits, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", counting)
    head_mod.fit_linear_head(x, y, epochs=5)
    assert set(seen) == {300 * 3}


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(1, 5), step=st.integers(1, 70),
       dtype=st.sampled_from(["float16", "float32", "float64"]), seed=st.integers(0, 2**16), constant=st.booleans())
def test_head_standardisation_in_row_blocks_is_the_whole_array_one_bit_for_bit(n, d, step, dtype, seed, constant):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * rng.uniform(0.01, 100, d) + rng.normal(0, 50, d)).astype(dtype)
    if constant:
        x[:, 0] = 3
    if d == 1:  # numpy sums a single column pairwise, not row by row: equal only within one block
        step = max(step, n)
    x64 = x.astype(np.float64)
    mu, sd = x64.mean(0), x64.std(0)  # what the fit used to compute on a whole float64 copy
    sd = np.where(sd > 1e-8 * max(1.0, float(np.abs(mu).max(initial=0.0))), sd, 1.0)
    old = head_mod.STANDARDISE_ROWS
    head_mod.STANDARDISE_ROWS = step
    try:
        z, m2, s2 = head_mod._standardise(x)
    finally:
        head_mod.STANDARDISE_ROWS = old
    assert z.dtype == np.float32
    np.testing.assert_array_equal(m2, mu)
    np.testing.assert_array_equal(s2, sd)
    np.testing.assert_array_equal(z, ((x64 - mu) / sd).astype(np.float32))


def test_head_fit_never_holds_a_float64_copy_of_the_features(monkeypatch):
    # 60,000 x 64 float32 (15 MB): a float64 copy alone would be 31 MB, and (x - mu) / sd two more
    rng = np.random.default_rng(0)
    y = np.arange(60_000) % 4
    x = (rng.normal(size=(len(y), 64)) + 2.0 * np.eye(4, 64)[y]).astype(np.float32)
    monkeypatch.setattr(head_mod, "STANDARDISE_ROWS", 2048)
    head_mod.fit_linear_head(x[:100], y[:100], epochs=2)  # first-call imports are not the fit's memory
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        head_mod.fit_linear_head(x, y, epochs=2)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    # the float32 standardised features (the tensor the fit runs on) plus float64 row blocks and the labels
    assert peak < 1.25 * x.nbytes, f"traced peak {peak / 2**20:.1f} MiB for {x.nbytes / 2**20:.1f} MiB of features"


def test_embed_features_are_embeds_features_without_logits():
    torch.manual_seed(0)
    model = Projector(in_dim=8, num_classes=50, num_positions=20, dim=16, depth=1, heads=2, mlp=32)
    rng = np.random.default_rng(0)
    lens = rng.integers(1, 6, size=40)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    tokens = TokenSet(rng.normal(size=(int(lens.sum()), 8)).astype(np.float32), offsets,
                      np.concatenate([np.sort(rng.choice(20, size=m, replace=False)) for m in lens]))
    feats, logits = embed(model, tokens, batch_size=7)
    assert logits.shape == (40, 50)
    np.testing.assert_array_equal(embed_features(model, tokens, batch_size=7), feats)


def test_kept_tags_held_flat_give_the_vocabulary_of_per_image_lists():
    from tagood.detectors.tagood.kept import KeptTags, take
    from tagood.detectors.tagood.memo import kept_digest
    from tagood.detectors.tagood.selection import select_vocabulary

    rng = np.random.default_rng(1)
    labels = np.arange(400) % 5
    ids = rng.integers(0, 60, size=(400, 6)) + 10 * (labels[:, None] % 3)
    keep = rng.random((400, 6)) < 0.35
    per_image = [ids[i][keep[i]] for i in range(400)]
    held = KeptTags.from_chunks([(ids[a : a + 128], keep[a : a + 128]) for a in range(0, 400, 128)])
    assert len(held) == 400 and all(np.array_equal(a, b) for a, b in zip(held, per_image, strict=True))
    idx = rng.permutation(400)[:150]
    assert all(np.array_equal(a, b) for a, b in zip(take(held, idx), take(per_image, idx), strict=True))
    assert np.array_equal(held[-1], per_image[-1]) and kept_digest(held, labels) == kept_digest(per_image, labels)
    assert select_vocabulary(held, labels, 5, seed=0) == select_vocabulary(per_image, labels, 5, seed=0)


def _gaussians_by_masks(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mahalanobis's fit as it was: a float64 copy, one boolean mask per class, the centred rows concatenated."""
    x = np.asarray(x, dtype=np.float64)
    classes = np.unique(y[y >= 0])
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = np.concatenate([x[y == c] - means[i] for i, c in enumerate(classes)])
    return means, np.linalg.pinv(centred.T @ centred / len(centred), hermitian=True)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 80), d=st.integers(1, 6), c=st.integers(1, 7), seed=st.integers(0, 2**16),
       dtype=st.sampled_from(["float16", "float32", "float64"]))
def test_mahalanobis_fit_grouped_by_class_is_the_masked_fit_bit_for_bit(n, d, c, seed, dtype):
    from tagood.detectors.mahalanobis import fit_gaussians

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(dtype)
    y = rng.integers(-1, c, n)
    y[0] = 0  # at least one labelled sample
    means, precision = fit_gaussians(x, y)
    ref_means, ref_precision = _gaussians_by_masks(x, y)
    np.testing.assert_array_equal(means, ref_means)
    np.testing.assert_array_equal(precision, ref_precision)


def test_mahalanobis_fit_in_row_blocks_holds_no_float64_copy_of_the_split(monkeypatch):
    import tagood.detectors.mahalanobis as maha

    rng = np.random.default_rng(5)
    y = rng.integers(0, 50, 40_000)
    x = (rng.normal(size=(len(y), 64)) + np.eye(50, 64)[y]).astype(np.float32)  # 10 MB; float64 copies 20 MB each
    ref_means, ref_precision = _gaussians_by_masks(x, y)
    monkeypatch.setattr(maha, "COV_BLOCK_ELEMENTS", 64 * 1024)  # blocks of 1,024 rows
    maha.fit_gaussians(x[:100], y[:100])  # first-call imports are not the fit's memory
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        means, precision = maha.fit_gaussians(x, y)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * x.nbytes, f"traced peak {peak / 2**20:.1f} MiB for {x.nbytes / 2**20:.1f} MiB of features"
    np.testing.assert_array_equal(means, ref_means)  # the means never depended on the blocks
    np.testing.assert_allclose(precision, ref_precision, rtol=1e-9, atol=1e-12)  # the product summed in blocks


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), b=st.integers(1, 30), seed=st.integers(0, 2**16),
       dtype=st.sampled_from(["float16", "float32", "float64"]))
def test_featurenorm_ratio_without_a_float64_copy_is_the_copys_bit_for_bit(n, b, seed, dtype):
    from tagood.detectors.featurenorm import norm_ratio

    rng = np.random.default_rng(seed)
    ind = (rng.random((n, b)) * 10).astype(dtype)
    ood = (rng.random((max(1, n // 3), b)) * 10).astype(dtype)
    old = ind.astype(np.float64).mean(axis=0) / np.maximum(ood.astype(np.float64).mean(axis=0), 1e-12)
    np.testing.assert_array_equal(norm_ratio(ind, ood), old)


def test_featurenorm_ratio_at_imagenet_rows_is_the_copys_bit_for_bit():
    from tagood.detectors.featurenorm import norm_ratio

    rng = np.random.default_rng(0)
    for width in (1, 2, 17):  # one column: summed pairwise, so it goes through the copy
        ind = (rng.random((1_281_167, width)) * 10).astype(np.float32)
        ood = (rng.random((5_000, width)) * 10).astype(np.float32)
        old = ind.astype(np.float64).mean(axis=0) / np.maximum(ood.astype(np.float64).mean(axis=0), 1e-12)
        np.testing.assert_array_equal(norm_ratio(ind, ood), old)
