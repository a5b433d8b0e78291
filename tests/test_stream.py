"""Streamed splits (issue 4: ImageNet train does not fit in memory): a benchmark run that streams the
tokens / tag maps shard by shard from the cache scores exactly like the in-memory run."""

from __future__ import annotations

import numpy as np
import pytest

from tagood.bench import runner
from tagood.bench.config import builtin
from tagood.cache import CacheReader, heavy_fields
from tagood.core.featureset import FeatureSet
from tagood.core.ragged import TokenSetSink
from tagood.core.types import TokenSet
from tagood.detectors.tagood.decompose import mean_tokens

METHODS = ["msp", "knn", "tagscore", "cs", "tagood[epochs=2]", "ce+cs[epochs=1]"]


def _cfg(stream: float | None):
    cfg = builtin("fashion", quick=True)
    cfg.ood = {"mnist": cfg.ood["mnist"]}
    cfg.options.shard_size, cfg.options.stream_above_gb = 64, stream
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory, backbone):
    cache = tmp_path_factory.mktemp("stream-cache")
    _, mem = runner.run(_cfg(None), cache_root=cache, methods=METHODS, progress=False, backbone=backbone)
    _, streamed = runner.run(_cfg(0), cache_root=cache, methods=METHODS, progress=False, backbone=backbone)
    return cache, mem, streamed


def test_streamed_run_scores_like_in_memory(runs):
    cache, mem, streamed = runs
    train = streamed.splits["train"].features
    assert train.is_streamed() and train.tokens is None and train.tag_probs is None
    assert {"tokens", "tag_probs", "tag_attention"} <= train.streamed
    assert len(list(train.chunks())) > 1  # several shards, so chunk boundaries are exercised
    assert not mem.splits["train"].features.is_streamed()
    assert not streamed.errors and not mem.errors
    for m in METHODS:
        for split in ("test", "mnist"):
            np.testing.assert_allclose(streamed.scores[m][split], mem.scores[m][split], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{m} on {split}")
    # the temporary object-token store of the streamed TagOOD training is gone
    work = cache / "work"
    assert work.is_dir() and not any(work.iterdir())


def test_iter_chunks_adds_loaded_fields_and_covers_every_sample(runs):
    _, _, streamed = runs
    fs = streamed.splits["test"].features
    chunks = list(fs.iter_chunks())
    assert sum(len(c) for c in chunks) == len(fs)
    assert np.array_equal(np.concatenate([c.logits for c in chunks]), fs.logits)
    assert np.array_equal(np.concatenate([c.labels for c in chunks]), fs.labels)
    assert all(c.tokens is not None and c.tag_attention is not None and not c.is_streamed() for c in chunks)
    loaded = fs.load_streamed()
    assert not loaded.is_streamed() and len(loaded.tokens) == len(fs)


def test_heavy_fields_threshold(runs):
    cache, _, streamed = runs
    reader = streamed.splits["train"].reader
    fields = ["features", "tokens", "tag_probs", "tag_attention"]
    assert heavy_fields(reader, fields, None) == []
    assert heavy_fields(reader, fields, 1000.0) == []
    assert heavy_fields(reader, fields, 0) == ["tokens", "tag_probs", "tag_attention"]
    assert isinstance(reader, CacheReader) and reader.nbytes() > 0


def test_chunks_out_of_order_is_an_error():
    ts = TokenSet.from_dense(np.zeros((4, 2, 3), np.float32))
    part = FeatureSet(tokens=ts.select(np.arange(2)), labels=np.zeros(2, np.int64))
    fs = FeatureSet(labels=np.zeros(4, np.int64), chunks=lambda: iter([(0, part), (0, part)]), streamed=frozenset({"tokens"}))
    with pytest.raises(RuntimeError, match="out of order"):
        list(fs.iter_chunks())


def test_token_sink_on_disk_equals_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    parts = []
    for n in (3, 5, 1):
        lens = rng.integers(0, 6, n)
        offsets = np.concatenate([[0], np.cumsum(lens)])
        parts.append(TokenSet(rng.normal(size=(offsets[-1], 4)).astype(np.float16), offsets, rng.integers(0, 49, offsets[-1])))
    mem, disk = TokenSetSink(None), TokenSetSink(tmp_path / "store")
    for p in parts:
        mem.append(p)
        disk.append(p)
    a, b = mem.finish(), disk.finish()
    assert isinstance(b.values, np.memmap)
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.values, b.values)
    assert np.array_equal(a.positions, b.positions)
    np.testing.assert_allclose(mean_tokens(b, chunk=2), mean_tokens(a), rtol=1e-12)
    sink = TokenSetSink(None)
    sink.append(parts[0])
    with pytest.raises(ValueError, match="dim"):
        sink.append(TokenSet(np.zeros((1, 5)), [0, 1], [0]))


def test_subset_of_streamed_split_equals_subset_of_loaded(runs):
    _, mem, streamed = runs
    idx = np.array([0, 5, 63, 64, 65, 200, len(mem.splits["train"].features) - 1])
    a = mem.splits["train"].features.subset(idx)
    b = streamed.splits["train"].features.subset(idx)
    assert not b.is_streamed() and len(b) == len(idx)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.tokens.values, np.asarray(b.tokens.values, dtype=np.float32))
    np.testing.assert_array_equal(a.tag_attention.ids, b.tag_attention.ids)
    np.testing.assert_array_equal(a.tag_probs, b.tag_probs)
    assert a.paths == b.paths == [mem.splits["train"].features.paths[i] for i in idx]
    with pytest.raises(ValueError, match="sorted"):
        a.subset(np.array([3, 1]))

    # lazy: the selection stays streamed (chunks of the selected rows) and holds the same samples
    lazy = streamed.splits["train"].features.subset(idx, lazy=True)
    assert lazy.is_streamed() and lazy.tokens is None and len(lazy) == len(idx)
    parts = list(lazy.iter_chunks())
    assert len(parts) > 1 and sum(len(p) for p in parts) == len(idx)
    np.testing.assert_array_equal(np.concatenate([p.labels for p in parts]), a.labels)
    np.testing.assert_array_equal(np.concatenate([p.tag_probs for p in parts]), a.tag_probs)
    np.testing.assert_array_equal(np.concatenate([np.asarray(p.tokens.values, np.float32) for p in parts]), a.tokens.values)
    assert [x for p in parts for x in p.paths] == a.paths
    again = lazy.subset(np.array([1, 4, 6]))  # an eager subset of a lazy one
    np.testing.assert_array_equal(again.tag_probs, a.tag_probs[[1, 4, 6]])


@pytest.mark.slow  # about 40-50 s on two cores
def test_vision_language_methods_dual_encode_only_their_few_shot_picks(tmp_path, backbone):
    pytest.importorskip("transformers")
    cfg = _cfg(None)
    methods = ["mcm", "krnft[shots=2,n_crops=4,k_in=1,k_out=1,epochs=1]"]
    _, state = runner.run(cfg, cache_root=tmp_path / "c", methods=methods, progress=False, backbone=backbone)
    assert not state.errors, state.errors
    vt = state.vlm_train
    assert len(vt) == 2 * 6 and np.array_equal(np.bincount(vt.labels), [2] * 6)
    assert vt.image_embeds is not None and len(vt.image_embeds) == len(vt)
    assert state.splits["train"].features.image_embeds is None  # the full train split is never dual-encoded


def test_train_logits_only_when_a_detector_reads_them(runs):
    """No built-in detector learns from IND-head logits of the training split (on ImageNet they would be 5 GB):
    the run computes them for the scored splits only, unless a detector declares it needs them at fit."""
    from tagood.detectors.base import Detector

    cache, mem, streamed = runs
    assert mem.splits["train"].features.logits is None
    assert mem.splits["test"].features.logits is not None and mem.splits["mnist"].features.logits is not None

    class FitsOnLogits(Detector):
        requires = frozenset({"features"})
        fit_requires = frozenset({"logits", "labels"})

        def _score(self, data):
            return np.zeros(len(data))

    class ScoresLogits(Detector):
        requires = frozenset({"logits"})
        fit_requires = frozenset()

        def _score(self, data):
            return np.zeros(len(data))

    assert runner._needs_logits([FitsOnLogits()]) == (True, False)
    assert runner._needs_logits([ScoresLogits()]) == (False, True)
    assert runner._needs_logits([runner.det_registry.create(m) for m in ("knn", "vim", "tagood", "msp")]) == (False, True)


@pytest.mark.slow  # about 40-50 s on two cores
def test_offline_patch_embeddings_of_a_streamed_split(runs):
    """GL-MCM and LoCoOp read patch embeddings, which the offline dual encoder derives from the cached tokens:
    on a streamed split they are derived chunk by chunk and score like the in-memory run."""
    pytest.importorskip("transformers")
    cache, _, _ = runs
    methods = ["glmcm", "locoop[epochs=2,shots=4]"]
    _, mem = runner.run(_cfg(None), cache_root=cache, methods=methods, progress=False)
    _, streamed = runner.run(_cfg(0), cache_root=cache, methods=methods, progress=False)
    test = streamed.splits["test"].features
    assert test.patch_embeds is None and {"tokens", "patch_embeds"} <= test.streamed
    assert not mem.errors and not streamed.errors, (mem.errors, streamed.errors)
    for m in methods:
        for split in ("test", "mnist"):
            np.testing.assert_allclose(streamed.scores[m][split], mem.scores[m][split], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{m} on {split}")


def test_derive_streamed_needs_a_streamed_split():
    with pytest.raises(ValueError, match="not streamed"):
        FeatureSet(labels=np.zeros(3)).derive_streamed("patch_embeds", lambda part: None)
