"""Choices made on held-out IND training images (never the test sets): the IND vocabulary's rule and tags per
class by cross-validation (:func:`select_vocabulary`), and the no-tag rule (:func:`choose_no_tag`).

The TagOOD paper (Li et al., ACM MM 2024, section 3.3) builds its vocabulary with one tag per class, the most
frequent, reviewed by hand; with a weaker tagger or a small split one tag per class leaves many IND images
without a kept tag, and a background tag shared by every class can win the count. These choices measure the
candidates on IND images that did not build the vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from tagood.detectors.tagood.kept import take
from tagood.detectors.tagood.vocabulary import VOCAB_RULES, Vocabulary, build_vocabulary, rank_tags, vocabulary_fit

__all__ = ["NO_TAG_DEGENERATE", "choose_no_tag", "pool_fits", "select_vocabulary", "stratified_folds", "wilson_upper"]

log = logging.getLogger(__name__)

#: IND no-tag fraction from which FPR95 degenerates under ``no_tag="ood"`` (95% of IND must be accepted)
NO_TAG_DEGENERATE = 0.05


def wilson_upper(q: float, n: int, z: float = 1.6449) -> float:
    """One-sided upper confidence bound (Wilson score) of a fraction measured on a sample.

    Args:
        q: the measured fraction, in [0, 1].
        n: the number of items it was measured on.
        z: the normal quantile (1.6449: a one-sided 95% bound).
    Returns:
        The upper bound, in [0, 1]; 1.0 when ``n`` is 0.
    """
    if n <= 0:
        return 1.0
    z2 = z * z
    centre = q + z2 / (2 * n)
    half = z * np.sqrt(q * (1 - q) / n + z2 / (4 * n * n))
    return float(min(1.0, (centre + half) / (1 + z2 / n)))


def stratified_folds(labels: np.ndarray, seed: int, folds: int = 5) -> np.ndarray:
    """Seeded folds stratified by class: a class's images are dealt round-robin over the folds in a random order.

    Args:
        labels: IND class id of each image, ``(N,)``.
        seed: seed of the order.
        folds: the number of folds.
    Returns:
        The fold id (0..folds-1) of each image, int64 ``(N,)``; -1 (never held out) for the image of a class with
        one image, so every class keeps images to build a vocabulary from.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.full(len(labels), -1, dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) > 1:
            fold[rng.permutation(idx)] = (np.arange(len(idx)) + rng.integers(folds)) % folds
    return fold


def pool_fits(fits: Sequence[dict[str, float]]) -> dict[str, float]:
    """One held-out fit from the folds' fits (:func:`tagood.detectors.tagood.vocabulary.vocabulary_fit` each).

    Args:
        fits: one fit per fold.
    Returns:
        ``coverage`` pooled over the images, ``precision`` over the covered images, ``separation`` (their product)
        and ``n`` (the images measured).
    """
    n = sum(f["n"] for f in fits)
    covered = sum(f["coverage"] * f["n"] for f in fits)
    coverage = covered / n if n else float("nan")
    precision = sum(f["precision"] * f["coverage"] * f["n"] for f in fits) / covered if covered else 0.0
    return {"coverage": coverage, "precision": precision, "separation": coverage * precision, "n": n}


def select_vocabulary(kept: Sequence[np.ndarray], labels: np.ndarray, num_classes: int, seed: int, rule: str = "auto",
                      per_class: int | str = "auto", coverage: float = 0.97, class_names: Sequence[str] | None = None,
                      max_m: int = 10, folds: int = 5) -> tuple[str, int, dict[str, float]]:
    """The vocabulary rule and tags per class, chosen on held-out IND training images by ``folds``-fold
    cross-validation stratified by class: each fold's images are measured against vocabularies built on the other
    folds, so every training image is held out once (a single 80/20 split held out too few images to tell 0% from
    5% untagged on small data).

    * tags per class ``m`` (``per_class="auto"``): the smallest ``m`` whose vocabularies give a kept IND tag to
      >= ``coverage`` of the held-out images (the paper uses m = 1 with a strong tagger; a weak one needs more
      tags per class, else many IND images have no tag);
    * rule (``rule="auto"``): ``frequent`` (the paper) or ``specific``, whichever has the higher held-out
      ``separation`` (coverage x the share of kept tags that name the image's own class,
      :func:`tagood.detectors.tagood.vocabulary.vocabulary_fit`); a tie keeps the paper's rule.

    Logs once which rule and how many tags won.

    Args:
        kept: the tag ids the tag rule keeps on each training image (before any vocabulary).
        labels: IND class id of each training image.
        num_classes: the number of IND classes.
        seed: seed of the folds.
        rule: ``auto``, ``frequent`` or ``specific``.
        per_class: ``auto`` or a number of tags per class.
        coverage: the held-out coverage ``per_class="auto"`` aims at.
        class_names: IND class names (messages).
        max_m: the most tags per class ``auto`` tries.
        folds: the number of folds.
    Returns:
        ``(rule, tags per class, held-out fit)``; the fit as :func:`pool_fits` gives it (measured on the images
        themselves, with a warning, when there are too few to hold some out).
    """
    fold = stratified_folds(labels, seed, folds)
    parts = []
    for f in range(folds):
        fit_idx, held_idx = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if len(held_idx):
            parts.append((fit_idx, held_idx, take(kept, held_idx)))
    rules = list(VOCAB_RULES) if rule == "auto" else [rule]
    results: list[tuple[str, int, dict[str, float]]] = []
    for r_name in rules:
        ranked = []
        for fit_idx, held_idx, kept_held in parts:
            try:
                ranked.append((rank_tags(take(kept, fit_idx), labels[fit_idx], num_classes, r_name), held_idx, kept_held))
            except ValueError:
                continue  # a class without tags outside this fold: the fold is not measured
        if not ranked:
            continue
        ms = [int(per_class)] if per_class != "auto" else range(1, max_m + 1)
        longest = max(len(u) for r, _, _ in ranked for u, _ in r)
        fit: dict[str, float] = {}
        m = ms[0]
        for m in ms:
            fit = pool_fits([vocabulary_fit(Vocabulary([[int(t) for t in u[:m]] for u, _ in r]), kh, labels[hi])
                             for r, hi, kh in ranked])
            if fit["coverage"] >= coverage or m >= longest:
                break
        if per_class == "auto" and fit["coverage"] < coverage:
            log.warning("IND vocabulary (%s): even %d tags per class cover only %.1f%% of held-out IND training images",
                        r_name, m, 100 * fit["coverage"])
        results.append((r_name, m, fit))
    if not results:  # too few images to hold some out: no choice is measured
        r_name = rules[0]
        m = 1 if per_class == "auto" else int(per_class)
        v = build_vocabulary(kept, labels, num_classes, m, class_names, rule=r_name, quiet=True)
        fit = vocabulary_fit(v, kept, labels)
        log.warning("IND vocabulary: too few IND training images to choose on held-out ones; rule %s, %d tag(s) per class",
                    r_name, m)
        return r_name, m, fit
    best = max(results, key=lambda r: (round(r[2]["separation"], 12), -rules.index(r[0])))
    others = "; ".join(f"{r}: {m} tag(s)/class, coverage {100 * f['coverage']:.1f}%, separation {f['separation']:.3f}"
                       for r, m, f in results if r != best[0])
    log.info("IND vocabulary: rule '%s' with %d tag(s) per class (%d held-out IND training images: coverage %.1f%%, "
             "separation %.3f)%s", best[0], best[1], int(best[2]["n"]), 100 * best[2]["coverage"], best[2]["separation"],
             f"; beat {others}" if others else "")
    return best


def choose_no_tag(q: float, n: int, announce: bool = True) -> str:
    """``no_tag="auto"``: the paper's rule (``ood``) when we can be confident that fewer than 5% of IND images have
    no kept IND tag -- the one-sided 95% Wilson upper bound of the held-out no-tag fraction ``q`` over ``n`` images
    is below :data:`NO_TAG_DEGENERATE` -- else ``fallback``.

    Why: under ``ood`` every IND image without a kept tag gets ``NO_TAG_SCORE``; when they are >= 5% of IND the
    FPR95 threshold is the no-tag score itself and FPR95 degenerates to 100% (and ``tagood fit``'s 95% threshold
    flags nothing). Its gain -- untagged OOD images are flagged for free -- is worth that only when ``q`` is surely
    below 5%: the paper's regime (RAM, a vocabulary naming every ImageNet class, and a large held-out part). A
    point estimate is not enough on small data: measured on ``fashion-clutter --quick``, the paper's vocabulary
    left 2.8% of 72 held-out IND training images untagged and 5.8% of the IND test images (FPR95 100). Under
    ``fallback`` the same images are scored from all of their tokens against the same centres: a continuous score
    that still ranks them (the centres were trained with untagged training images on all tokens too).

    Args:
        q: the fraction of held-out IND training images without a kept IND tag.
        n: the number of held-out images it was measured on.
        announce: log the choice at INFO (else DEBUG: a choice already logged in this run).
    Returns:
        ``"ood"`` or ``"fallback"``.
    """
    upper = wilson_upper(q, n)
    rule = "ood" if upper < NO_TAG_DEGENERATE else "fallback"
    log.log(logging.INFO if announce else logging.DEBUG,
            "no-tag rule: %s (%.1f%% of %d held-out IND training images keep no IND tag; 95%% upper bound %.1f%%, "
            "'ood' needs < %.0f%%)", rule, 100 * q, n, 100 * upper, 100 * NO_TAG_DEGENERATE)
    return rule
