"""A run that needs a subset of the fields of a complete cache entry reads that entry instead of extracting its own
(:func:`tagood.cache.superset_entry`), with the same arrays a fresh extraction of the subset stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tagood.backbones.synthetic import SyntheticTagger
from tagood.cache import CacheReader, cache_key, superset_entry
from tagood.data.synthetic import SyntheticSource
from tagood.extract import extract_split

TAGGER = {"tokens": 10, "width": 8, "tags": 40, "top_k_tags": 3, "blocks": 4}


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def test_subset_run_reads_the_complete_superset_entry(tmp_path: Path):
    tagger, src = SyntheticTagger(**TAGGER), SyntheticSource(70, "train", num_classes=3)
    full = extract_split(src, tagger, tmp_path / "c", split="train", batch_size=16, progress=False, shard_size=32)
    assert set(full.fields) >= {"features", "tokens", "tag_probs"}
    before = _entries(tmp_path / "c")
    sub = extract_split(src, tagger, tmp_path / "c", split="train", fields=["features", "block_norms"], batch_size=16,
                        progress=False, shard_size=32)
    assert sub.dir == full.dir and _entries(tmp_path / "c") == before  # nothing extracted, no second entry
    alone = extract_split(src, tagger, tmp_path / "fresh", split="train", fields=["features", "block_norms"],
                          batch_size=16, progress=False, shard_size=32)
    assert alone.dir.name != sub.dir.name and sorted(alone.fields) == ["block_norms", "features"]
    for f in ("features", "block_norms", "label", "index"):
        np.testing.assert_array_equal(sub.array(f, dtype=None), alone.array(f, dtype=None))


def test_only_a_complete_entry_of_the_same_key_is_reused(tmp_path: Path):
    tagger, src = SyntheticTagger(**TAGGER), SyntheticSource(70, "train", num_classes=3)
    root = tmp_path / "c"
    part = extract_split(src, tagger, root, split="train", batch_size=16, progress=False, shard_size=16, max_batches=2)
    assert not part.complete
    sub = extract_split(src, tagger, root, split="train", fields=["features"], batch_size=16, progress=False)
    assert sub.dir != part.dir and sub.complete  # an unfinished superset is not read: the subset is extracted
    other = SyntheticSource(70, "test", num_classes=3)  # another source fingerprint: never a match
    key = cache_key(tagger.id, tagger.weights_hash, tagger.transform_id, other.fingerprint(), {"fields": ["features"]})
    assert superset_entry(root, "train", key) is None
    assert superset_entry(root, "test", key) is None  # another split name
    full = extract_split(src, tagger, root, split="train", batch_size=16, progress=False)  # resumes the partial entry
    assert full.dir == part.dir and full.complete
    # the exact entry exists (the features-only one): it is read, never replaced by the superset
    again = extract_split(src, tagger, root, split="train", fields=["features"], batch_size=16, progress=False)
    assert again.dir == sub.dir
    # a subset no entry holds yet reuses the complete superset, with the fewest fields among those that qualify
    probs = extract_split(src, tagger, root, split="train", fields=["tag_probs"], batch_size=16, progress=False)
    assert probs.dir == full.dir and isinstance(CacheReader(probs.dir), CacheReader)
    # extraction options other than the fields are part of what must match
    opt = cache_key(tagger.id, tagger.weights_hash, tagger.transform_id, src.fingerprint(),
                    {"fields": ["features"], "crop": 1})
    assert superset_entry(root, "train", opt) is None


def test_unreadable_or_damaged_candidates_are_skipped(tmp_path: Path):
    import os

    tagger, src = SyntheticTagger(**TAGGER), SyntheticSource(20, "train", num_classes=2)
    root = tmp_path / "c"
    full = extract_split(src, tagger, root, split="train", batch_size=16, progress=False)
    key = cache_key(tagger.id, tagger.weights_hash, tagger.transform_id, src.fingerprint(), {"fields": ["features"]})
    assert superset_entry(root, "train", key) == (full.dir, full.manifest.key, sorted(full.fields))
    damaged = root / ("train-" + "0" * 16)
    damaged.mkdir()
    (damaged / "manifest.json").write_text("{")
    os.chmod(full.dir, 0)
    try:
        if os.access(full.dir / "manifest.json", os.R_OK):  # running as root: permissions do not apply
            assert superset_entry(root, "train", key) is not None
        else:
            assert superset_entry(root, "train", key) is None
    finally:
        os.chmod(full.dir, 0o755)
    assert superset_entry(root, "train", key)[0] == full.dir
