"""Numerical self-test of a tagger or dual encoder loaded from real weights.

The loaders of RAM and CLIP are tested here only on tiny random models saved in the official
layouts (no weights can be downloaded in CI), so a silently wrong key mapping, transposed weight
or wrong preprocessing in *real* weights would produce plausible-looking garbage. Run this once
after downloading weights (``tagood selftest ram|clip|efficientnet``): it pushes two real photos
that ship with scikit-learn (``flower.jpg``: a flower; ``china.jpg``: a Chinese palace/temple)
through the model and checks

* ``shapes``: every output has the documented shape, is finite, probabilities lie in [0, 1];
* ``deterministic``: the same batch twice gives the same outputs, and an image alone gives what
  it gives inside a batch (batch-independence);
* ``attention`` (taggers): each kept tag's attention map varies over the tokens (the TagOOD
  decomposition cuts on it; a constant map means broken attention);
* ``semantics``: a tagger ranks a flower-like tag among the top 5 of ``flower.jpg`` and a
  building-like tag among the top 5 of ``china.jpg``; a dual encoder picks ``flower`` and
  ``building`` for them among eight everyday labels by zero-shot;
* ``distinct``: the two photos do not get the same top tags.

A model with random weights fails ``semantics`` (tested on the tiny RAM); the real
EfficientNet-Lite0 weights pass every check (tested). Higher-level scores are not involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from tagood.core.numeric import l2_normalize

#: Tag names that count as "right" for each photo, across the vocabularies used here (RAM's 4585
#: tags, ImageNet-1K class names, everyday words).
EXPECTED: dict[str, frozenset[str]] = {
    "flower.jpg": frozenset({"flower", "daisy", "petal", "blossom", "bloom", "plant", "flora", "pollen", "bee", "yellow",
                             "sunflower", "flowerbed", "garden", "wildflower", "pink", "bouquet", "rapeseed", "pot",
                             "ant", "fly", "lacewing", "damselfly", "cabbage butterfly", "sulphur butterfly"}),
    "china.jpg": frozenset({"building", "palace", "temple", "pagoda", "roof", "architecture", "tower", "monastery",
                            "castle", "church", "house", "stupa", "boathouse", "tile roof", "chinese architecture",
                            "mosque", "dome", "shrine", "pavilion", "residence", "historic", "landmark", "tree",
                            "park", "sky", "garden", "planetarium", "triumphal arch", "bell cote", "cinema"}),
}
#: Zero-shot labels for a dual encoder; the right one per photo is the first.
ZERO_SHOT = ("flower", "building", "dog", "car", "bird", "boat", "food", "person")
_TRUTH = {"flower.jpg": "flower", "china.jpg": "building"}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def sample_photos() -> dict[str, Image.Image]:
    """The two real photos shipped with scikit-learn."""
    from sklearn.datasets import load_sample_image

    return {n: Image.fromarray(load_sample_image(n)) for n in ("flower.jpg", "china.jpg")}


def _norm(name: str) -> str:
    return name.replace("_", " ").strip().lower()


def _outputs_equal(a: Any, b: Any, fields: tuple[str, ...], tol: float) -> tuple[bool, str]:
    worst = 0.0
    for f in fields:
        x, y = getattr(a, f, None), getattr(b, f, None)
        if x is None or y is None:
            continue
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            return False, f"{f}: shapes {x.shape} vs {y.shape}"
        worst = max(worst, float(np.max(np.abs(x - y))) / max(1.0, float(np.max(np.abs(x)))))
    return worst <= tol, f"largest relative difference {worst:.2e} (tolerance {tol:.0e})"


def selftest_tagger(tagger: Any, top: int = 5, tol: float = 1e-3) -> list[Check]:
    """Run the checks of the module docstring on a tagger backbone (``preprocess``, ``forward``, ``tag_names``)."""
    photos = sample_photos()
    names = list(photos)
    batch = np.stack([tagger.preprocess(photos[n]) for n in names])
    out = tagger.forward(batch)
    checks: list[Check] = []

    n_tags = len(tagger.tag_names)
    probs = np.asarray(out.tag_probs, dtype=np.float64)
    problems = []
    if probs.shape != (2, n_tags):
        problems.append(f"tag_probs {probs.shape} != (2, {n_tags})")
    if not np.isfinite(probs).all() or probs.min() < 0 or probs.max() > 1:
        problems.append("tag_probs not finite probabilities in [0, 1]")
    tokens = np.asarray(out.tokens)
    n_tok = getattr(tagger, "num_tokens", None) or getattr(tagger, "n_tokens", None)
    if tokens.ndim != 3 or len(tokens) != 2 or (n_tok is not None and tokens.shape[1] != n_tok) or not np.isfinite(tokens).all():
        problems.append(f"tokens {tokens.shape} (expected (2, {n_tok}, D), finite)")
    ids, maps = np.asarray(out.tag_ids), np.asarray(out.tag_attention, dtype=np.float64)
    if ids.ndim != 2 or ids.min() < 0 or ids.max() >= n_tags or maps.shape[:2] != ids.shape or maps.shape[2] != tokens.shape[1]:
        problems.append(f"tag_ids {ids.shape} / tag_attention {maps.shape} inconsistent with {n_tags} tags, "
                        f"{tokens.shape[1]} tokens")
    if not np.isfinite(maps).all():
        problems.append("tag_attention not finite")
    checks.append(Check("shapes", not problems, "; ".join(problems) or
                        f"tag_probs (2,{n_tags}), tokens {tokens.shape[1:]}, attention {maps.shape[1:]}"))

    again = tagger.forward(batch)
    ok_same, d_same = _outputs_equal(out, again, ("tag_probs", "tokens", "tag_attention"), tol)
    alone = tagger.forward(batch[1:2])
    ok_alone, d_alone = _outputs_equal(type(out)(tag_probs=probs[1:2], tokens=tokens[1:2]), alone, ("tag_probs", "tokens"), tol)
    checks.append(Check("deterministic", ok_same and ok_alone, f"repeat: {d_same}; alone vs in batch: {d_alone}"))

    spread = maps.max(axis=2) - maps.min(axis=2)  # (2,k)
    flat = int((spread <= 1e-6 * np.maximum(1.0, np.abs(maps).max(axis=2))).sum())
    checks.append(Check("attention", flat == 0, f"{flat} of {spread.size} top-tag maps are constant over the tokens"))

    tops = [[_norm(tagger.tag_names[j]) for j in np.argsort(-probs[i])[:top]] for i in range(2)]
    hits = [bool(set(tops[i]) & EXPECTED[n]) for i, n in enumerate(names)]
    checks.append(Check("semantics", all(hits), "; ".join(f"{n}: top-{top} {tops[i]}" for i, n in enumerate(names))))
    checks.append(Check("distinct", tops[0][:3] != tops[1][:3], f"top-3 tags {tops[0][:3]} vs {tops[1][:3]}"))
    return checks


def selftest_dual_encoder(encoder: Any, template: str = "a photo of a {}.") -> list[Check]:
    """Checks for a dual encoder (``preprocess``, ``encode_images``, ``encode_texts``, optional ``patch_tokens``)."""
    photos = sample_photos()
    names = list(photos)
    batch = np.stack([encoder.preprocess(photos[n]) for n in names])
    img = np.asarray(encoder.encode_images(batch), dtype=np.float64)
    txt = np.asarray(encoder.encode_texts([template.format(w) for w in ZERO_SHOT]), dtype=np.float64)
    checks: list[Check] = []
    problems = []
    if img.ndim != 2 or len(img) != 2 or txt.shape != (len(ZERO_SHOT), img.shape[1]):
        problems.append(f"image embeddings {img.shape}, text embeddings {txt.shape} do not share one space")
    if not (np.isfinite(img).all() and np.isfinite(txt).all()):
        problems.append("embeddings not finite")
    patches = None
    if hasattr(encoder, "patch_tokens"):
        patches = np.asarray(encoder.patch_tokens(batch))
        if patches.ndim != 3 or len(patches) != 2 or patches.shape[2] != img.shape[1] or not np.isfinite(patches).all():
            problems.append(f"patch tokens {patches.shape} (expected (2, P, {img.shape[1]}), finite)")
    checks.append(Check("shapes", not problems, "; ".join(problems) or
                        f"image {img.shape[1:]}, text {txt.shape[1:]}"
                        + (f", patches {patches.shape[1:]}" if patches is not None else "")))
    again = np.asarray(encoder.encode_images(batch), dtype=np.float64)
    alone = np.asarray(encoder.encode_images(batch[1:2]), dtype=np.float64)
    scale = max(1.0, float(np.abs(img).max()))
    d = max(float(np.abs(again - img).max()), float(np.abs(alone - img[1:2]).max())) / scale
    checks.append(Check("deterministic", d <= 1e-3, f"largest relative difference {d:.2e} (repeat and alone vs in batch)"))
    a, b = l2_normalize(img), l2_normalize(txt)
    pred = [ZERO_SHOT[j] for j in (a @ b.T).argmax(1)]
    ok = [p == _TRUTH[n] for p, n in zip(pred, names, strict=True)]
    checks.append(Check("semantics", all(ok),
                        "; ".join(f"{n} -> '{p}' (want '{_TRUTH[n]}')" for n, p in zip(names, pred, strict=True))))
    checks.append(Check("distinct", pred[0] != pred[1], f"zero-shot labels {pred}"))
    return checks
