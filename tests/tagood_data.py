"""Data shared by the TagOOD-family tests: a toy tagged split and real scene features from EfficientNet-Lite0."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.types import TagAttention, TokenSet


def toy_tagged(n_per: int = 20, seed: int = 0, tag_prob: Callable[[int], float] = lambda k: 0.8) -> FeatureSet:
    """Three classes of 9-token images: class ``k``'s object tokens (3 random ones) carry +4 in dims 4k..4k+3 and
    the attention of tag ``10 + k`` (probability ``tag_prob(k)``); tag 19 is a second, uninformative tag."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per)
    toks = rng.normal(0, 1.0, (len(labels), 9, 16)).astype(np.float32)
    maps = rng.random((len(labels), 2, 9)).astype(np.float32)
    ids = np.zeros((len(labels), 2), np.int64)
    probs = np.full((len(labels), 20), 0.01)
    for i, k in enumerate(labels):
        obj = rng.choice(9, 3, replace=False)
        toks[i, obj, 4 * k: 4 * k + 4] += 4.0
        maps[i, 0, obj] += 5.0
        ids[i] = [10 + k, 19]
        probs[i, 10 + k] = tag_prob(int(k))
    return FeatureSet(labels=labels, tokens=TokenSet.from_dense(toks), tag_probs=probs, tag_attention=TagAttention(ids, maps))


def scene_features(backbone: Any, tmp_path_factory: Any) -> tuple[dict[str, FeatureSet], Context]:
    """Real EfficientNet-Lite0 features of a few real-photo scenes (train, test, scene-clutter) and the tagger's
    context, extracted into a fresh cache."""
    from tagood.backbones.factory import tagger_context
    from tagood.data.scenes import scene_splits
    from tagood.extract import extract_split

    parts = scene_splits(n_train_per_class=4, n_test_per_class=2, n_ood=4, seed=0)
    cache = tmp_path_factory.mktemp("scene-cache")
    fs = {k: extract_split(parts[k], backbone, cache, split=k, progress=False).to_featureset()
          for k in ("train", "test", "scene-clutter")}
    ctx = Context(class_names=parts["train"].class_names, **tagger_context(backbone, cache), seed=0)
    return fs, ctx
