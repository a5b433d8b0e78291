"""FeatureSet is one view over chunks (issue 15): a split held in memory is one chunk, a cache entry
yields chunks, and every detector scores a split split into any chunks exactly like the whole split.

Real data: EfficientNet-Lite0 (real weights) features, tokens and CAM tag maps of real photo scenes
(tuxpaint stamps on scikit-image / scikit-learn photos), written to and read from the real cache."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagood import detectors
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet, from_arrays, from_cache
from tagood.core.types import TagAttention, TokenSet

FIELDS = ["logits", "features", "tokens", "tag_probs", "tag_attention"]
#: detectors over each kind of input: logits (msp, energy), pooled features (knn, mahalanobis),
#: tokens + tag maps (cs: TagOOD's class-mean ablation, which decomposes each chunk)
METHODS = ["msp", "energy", "knn[k=5]", "mahalanobis", "cs[per_class=1,no_tag=fallback]"]


@pytest.fixture(scope="module")
def scenes(backbone, tmp_path_factory):
    from tagood.data.scenes import scene_splits
    from tagood.extract import extract_split

    parts = scene_splits(n_train_per_class=3, n_test_per_class=2, n_ood=6, seed=0)
    cache = tmp_path_factory.mktemp("featureset-cache")
    readers = {k: extract_split(parts[k], backbone, cache, split=k, fields=FIELDS, shard_size=5, progress=False)
               for k in ("train", "test", "scene-clutter")}
    ctx = Context(class_names=parts["train"].class_names, seed=0)
    train = readers["train"].to_featureset(FIELDS)
    fitted = {m: detectors.create(m).fit(train, ctx) for m in METHODS}
    return readers, fitted


def _test_split(readers):
    """IND test and clutter OOD scenes as one in-memory split (both kinds of samples in every chunking)."""
    a, b = (readers[k].to_featureset(FIELDS) for k in ("test", "scene-clutter"))
    return FeatureSet.from_chunks([a, b]).load_streamed(cast=False)


def _chunked(fs: FeatureSet, cuts: list[int]) -> FeatureSet:
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(fs))), len(fs)]
    return FeatureSet.from_chunks([fs.subset(np.arange(a, b)) for a, b in zip(bounds, bounds[1:], strict=False)],
                                  name=fs.name)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=6))
def test_any_chunking_scores_like_the_whole_split(scenes, cuts):
    readers, fitted = scenes
    whole = _test_split(readers)
    chunked = _chunked(whole, cuts)
    assert chunked.is_streamed() and chunked.tokens is None and len(chunked) == len(whole)
    assert sum(len(c) for c in chunked.iter_chunks()) == len(whole)
    for m, det in fitted.items():
        np.testing.assert_allclose(det.score(chunked), det.score(whole), rtol=1e-6, atol=1e-9, err_msg=m)


def test_cache_streamed_split_scores_like_loaded(scenes):
    """The cache's own chunks (shards of 5 samples, tokens memory-mapped fp16) score like the loaded split."""
    readers, fitted = scenes
    r = readers["test"]
    loaded = r.to_featureset(FIELDS)
    streamed = r.to_featureset(FIELDS, stream=["tokens", "tag_probs", "tag_attention"])
    assert streamed.is_streamed() and streamed.tokens is None and len(list(streamed.chunks())) > 1
    assert streamed.paths == loaded.paths and np.array_equal(streamed.labels, loaded.labels)
    for m, det in fitted.items():
        np.testing.assert_allclose(det.score(streamed), det.score(loaded), rtol=1e-6, atol=1e-9, err_msg=m)


def test_one_mapping_for_whole_split_and_shards(scenes):
    """from_arrays maps the stored names the same way whether the arrays are a whole split or one shard:
    the shards' FeatureSets concatenated equal the loaded split, field by field."""
    readers, _ = scenes
    r = readers["test"]
    loaded = from_cache(r, FIELDS)
    parts = [from_arrays(a, FIELDS) for _, a in r.iter_arrays(FIELDS)]
    v = parts[0].tokens.values  # a view of the memory-mapped shard in its stored dtype, not a loaded copy
    assert len(parts) > 1 and v.dtype == np.float16 and not v.flags.owndata
    joined = FeatureSet.from_chunks(parts).load_streamed()  # float32 tokens, like the loaded split
    for f in ("labels", "logits", "features", "tag_probs"):
        a, b = getattr(joined, f), getattr(loaded, f)
        assert a.dtype == b.dtype and np.array_equal(a, b), f
    assert loaded.tokens.values.dtype == np.float32 and np.array_equal(joined.tokens.values, loaded.tokens.values)
    assert np.array_equal(joined.tokens.offsets, loaded.tokens.offsets)
    assert np.array_equal(joined.tokens.positions, loaded.tokens.positions)
    assert joined.tag_attention.ids.dtype == np.int64 and np.array_equal(joined.tag_attention.ids, loaded.tag_attention.ids)
    assert joined.tag_attention.maps.dtype == np.float32 and np.array_equal(joined.tag_attention.maps, loaded.tag_attention.maps)
    assert loaded.paths == r.idents and loaded.name == "test"
    with pytest.raises(KeyError, match="no field 'nope'"):
        from_cache(r, ["nope"])


def test_held_fields_are_one_chunk_without_reading_streamed_ones():
    """A detector whose inputs are all held scores the split as one chunk: the streamed source is not read."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4)).astype(np.float32)
    reads = []

    def chunks():
        reads.append(1)
        yield 0, FeatureSet(tokens=TokenSet.from_dense(np.zeros((7, 2, 3), np.float32)))

    fs = FeatureSet(labels=np.zeros(7, np.int64), logits=logits, chunks=chunks, streamed=frozenset({"tokens"}))
    one = list(fs.iter_chunks({"logits"}))
    assert len(one) == 1 and one[0].tokens is None and not one[0].is_streamed() and not reads
    det = detectors.create("msp").fit(FeatureSet(logits=logits))
    np.testing.assert_array_equal(det.score(fs), det.score(FeatureSet(logits=logits)))
    assert not reads
    full = list(fs.iter_chunks())
    assert reads and full[0].tokens is not None and np.array_equal(full[0].logits, logits)


def test_subset_and_extra_follow_the_chunks():
    rng = np.random.default_rng(1)
    n = 9
    whole = FeatureSet(labels=np.arange(n), features=rng.normal(size=(n, 3)), paths=[f"p{i}" for i in range(n)],
                       tag_attention=TagAttention(rng.integers(0, 5, (n, 2)), rng.random((n, 2, 4))),
                       extra={"w": np.arange(n) * 2.0, "note": "kept"})
    parts = [whole.subset(np.arange(a, b)) for a, b in ((0, 4), (4, 5), (5, 9))]
    assert parts[1].extra == {"w": np.array([8.0]), "note": "kept"}
    chunked = FeatureSet.from_chunks(parts)
    assert chunked.streamed == {"features", "tag_attention"} and chunked.paths == whole.paths
    idx = np.array([1, 4, 7, 8])
    a, b = whole.subset(idx), chunked.subset(idx)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.tag_attention.maps, b.tag_attention.maps)
    assert b.paths == ["p1", "p4", "p7", "p8"] and not b.is_streamed()
    with pytest.raises(ValueError, match="hold at least one field"):
        FeatureSet.from_chunks(parts, hold=())


def test_derive_is_one_call_for_held_and_streamed_inputs():
    rng = np.random.default_rng(2)
    whole = FeatureSet(labels=np.arange(6), tokens=TokenSet.from_dense(rng.normal(size=(6, 3, 4))))
    chunked = FeatureSet.from_chunks([whole.subset(np.arange(0, 2)), whole.subset(np.arange(2, 6))])
    calls = []

    def norms(fs: FeatureSet) -> np.ndarray:
        calls.append(len(fs))
        return np.linalg.norm(fs.tokens.pad()[0], axis=(1, 2))

    whole.derive("tag_probs", norms, {"tokens"})
    chunked.derive("tag_probs", norms, {"tokens"})
    assert calls == [6] and "tag_probs" in chunked.streamed and chunked.tag_probs is None  # lazily, per chunk
    np.testing.assert_array_equal(np.concatenate([c.tag_probs for c in chunked.iter_chunks()]), whole.tag_probs)
    assert calls == [6, 2, 4]


def test_types_is_below_featureset_and_context():
    """``tagood.core.types`` (the base data types) imports neither ``tagood.core.featureset`` nor ``tagood.core.context``, which
    import it; ``FeatureSet`` and ``Context`` have one home each."""
    code = ("import sys, tagood.core.types as t; "
            "assert 'tagood.core.featureset' not in sys.modules and 'tagood.core.context' not in sys.modules; "
            "assert not hasattr(t, 'FeatureSet') and not hasattr(t, 'Context')")
    subprocess.run([sys.executable, "-c", code], check=True)
