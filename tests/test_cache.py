"""Feature cache: round trips (hypothesis), atomicity, resumption, key separation, memory mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagood.cache import CacheError, CacheReader, CacheWriter, Manifest, cache_key, entry_dir, mmap_safetensors
from tagood.core.types import TokenSet

KEY = cache_key("toy", "w0", "t0", "d0", {"tau": 0.5})


def _batch(rng: np.random.Generator, start: int, n: int, d: int = 4):
    lens = rng.integers(0, 6, size=n)
    toks = [(rng.standard_normal((m, d)).astype(np.float32), np.sort(rng.choice(49, size=m, replace=False))) for m in lens]
    feats = rng.standard_normal((n, d)).astype(np.float32)
    probs = rng.random((n, 3)).astype(np.float32)
    return np.arange(start, start + n), rng.integers(0, 3, size=n), [f"img{start + j}.png" for j in range(n)], {
        "tokens": toks,
        "features": feats,
        "tag_probs": probs,
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=6),
    shard=st.integers(1, 9),
    failed_every=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_round_trip_any_sharding(tmp_path_factory, sizes, shard, failed_every, seed):
    root = tmp_path_factory.mktemp("c")
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    w = CacheWriter.open(root, "split", KEY, n_source=n, shard_size=shard)
    want_tok, want_pos, want_feat, want_idx, want_failed = [], [], [], [], []
    start = 0
    for m in sizes:
        idx, lab, ids, arrs = _batch(rng, start, m)
        keep = [j for j in range(m) if not (failed_every and (idx[j] % failed_every == 0))]
        # failed samples are recorded in source order, between kept ones
        for j in range(m):
            if j in keep:
                w.add(idx[j : j + 1], lab[j : j + 1], ids[j : j + 1],
                      {"tokens": [arrs["tokens"][j]], "features": arrs["features"][j : j + 1],
                       "tag_probs": arrs["tag_probs"][j : j + 1]})
                want_tok.append(arrs["tokens"][j][0])
                want_pos.append(arrs["tokens"][j][1])
                want_feat.append(arrs["features"][j])
                want_idx.append(idx[j])
            else:
                w.skip(int(idx[j]), ids[j], "broken")
                want_failed.append(int(idx[j]))
        start += m
    r = w.finish()
    assert r.complete and len(r) == len(want_idx)
    assert r.indices.tolist() == want_idx
    assert [f["index"] for f in r.failed] == want_failed
    assert r.idents == [f"img{i}.png" for i in want_idx]
    if want_idx:
        ts = r.tokens("tokens")
        assert len(ts) == len(want_idx)
        for i in range(len(want_idx)):
            v, p = ts.get(i)
            np.testing.assert_allclose(v, want_tok[i].astype(np.float16).astype(np.float32), rtol=0, atol=0)
            np.testing.assert_array_equal(p, want_pos[i])
        np.testing.assert_array_equal(r.array("features"), np.stack(want_feat).astype(np.float16).astype(np.float32))
        assert r.array("tag_probs").dtype == np.float32
    # every shard covers a contiguous, disjoint range of source indices
    stops = [(s.start, s.stop) for s in r.manifest.shards]
    assert stops[0][0] == 0 and stops[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(stops[:-1], stops[1:], strict=True))


def test_fp16_storage_and_memmap(tmp_path: Path):
    rng = np.random.default_rng(0)
    w = CacheWriter.open(tmp_path, "s", KEY, n_source=10, shard_size=4)
    idx, lab, ids, arrs = _batch(rng, 0, 10)
    w.add(idx, lab, ids, arrs)
    r = w.finish()
    raw = r.shard(0)
    assert raw["features"].dtype == np.float16 and isinstance(raw["features"], np.memmap)
    assert raw["tokens.values"].dtype == np.float16
    assert len(r.manifest.shards) == 3  # 4 + 4 + 2
    # the file is a standard safetensors file
    from safetensors.numpy import load_file

    loaded = load_file(str(r.dir / r.manifest.shards[0].file))
    np.testing.assert_array_equal(loaded["features"], raw["features"])


def test_resume_after_interruption_loses_and_duplicates_nothing(tmp_path: Path):
    rng = np.random.default_rng(1)
    idx, lab, ids, arrs = _batch(rng, 0, 20)
    w = CacheWriter.open(tmp_path, "s", KEY, n_source=20, shard_size=6)
    w.add(idx[:9], lab[:9], ids[:9], {k: v[:9] for k, v in arrs.items()})  # commits one shard of 6; 3 buffered
    # simulate a kill: the buffered rows are lost, a half-written temp file and an uncommitted shard lie around
    d = entry_dir(tmp_path, "s", KEY)
    (d / ".shard-00001.safetensors.abc.tmp").write_bytes(b"partial")
    (d / "shard-00001.safetensors").write_bytes(b"garbage never listed in the manifest")
    del w
    w2 = CacheWriter.open(tmp_path, "s", KEY, n_source=20, shard_size=6)
    assert w2.next_index == 6
    assert not list(d.glob(".*.tmp")) and not (d / "shard-00001.safetensors").exists()
    s = w2.next_index
    w2.add(idx[s:], lab[s:], ids[s:], {k: v[s:] for k, v in arrs.items()})
    r = w2.finish()
    assert r.indices.tolist() == list(range(20))
    np.testing.assert_array_equal(r.array("features"), arrs["features"].astype(np.float16).astype(np.float32))


def test_key_mismatch_and_corrupt_manifest(tmp_path: Path):
    w = CacheWriter.open(tmp_path, "s", KEY, n_source=3, shard_size=2)
    d = w.dir
    w.close()
    m = Manifest.load(d / "manifest.json")
    m.key = {"other": 1}  # a consistent manifest (valid checksum) written for another key
    (d / "manifest.json").write_text(json.dumps(m.to_json()))
    with pytest.raises(CacheError, match="another key"):
        CacheWriter.open(tmp_path, "s", KEY, n_source=3)
    # the same edit by hand (checksum not updated) is caught as tampering
    (d / "manifest.json").write_text(json.dumps({**m.to_json(), "key": KEY}))
    with pytest.raises(CacheError, match="modified or damaged"):
        CacheWriter.open(tmp_path, "s", KEY, n_source=3)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="corrupt cache manifest"):
        CacheReader(d)
    other = cache_key("toy", "w0", "t0", "d0", {"tau": 0.25})
    assert entry_dir(tmp_path, "s", other) != d  # other options never share an entry


def test_truncated_shard_is_a_clear_error(tmp_path: Path):
    rng = np.random.default_rng(2)
    w = CacheWriter.open(tmp_path, "s", KEY, n_source=5, shard_size=5)
    idx, lab, ids, arrs = _batch(rng, 0, 5)
    w.add(idx, lab, ids, arrs)
    r = w.finish()
    f = r.dir / r.manifest.shards[0].file
    f.write_bytes(f.read_bytes()[:-20])
    with pytest.raises(CacheError, match="truncated"):
        mmap_safetensors(f)


def test_tokenset_select_pad_roundtrip():
    rng = np.random.default_rng(3)
    lens = [3, 0, 5, 1]
    vals = rng.standard_normal((sum(lens), 2)).astype(np.float32)
    offs = np.concatenate([[0], np.cumsum(lens)])
    pos = np.arange(sum(lens))
    ts = TokenSet(vals, offs, pos)
    sub = ts.select(np.array([2, 0]))
    np.testing.assert_array_equal(sub.get(0)[0], ts.get(2)[0])
    dense, p, mask = ts.pad()
    assert dense.shape == (4, 5, 2) and mask.sum() == sum(lens)
    np.testing.assert_array_equal(dense[2][mask[2]], ts.get(2)[0])
    with pytest.raises(ValueError):
        TokenSet(vals, np.array([0, 2]), pos)
