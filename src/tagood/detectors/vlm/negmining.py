"""NegMining (Jiang, Liu, Zhao, Ji, Fang, Wang, Wang, Kwok, Han, "Negative Label Guided OOD Detection
with Pretrained Vision-Language Models", ICLR 2024, section 3.2): choose as negative labels the
candidate words *farthest* from the IND labels.

For candidate embedding ``u_i`` and IND label embeddings ``y_1..y_K``, its distance is the
``eta``-percentile of ``{-cos(u_i, y_k)}_k`` (``eta = 0.05``: close to the most similar IND label,
robust to a single outlier); the ``M`` candidates with the largest distance are kept (M = 10,000).
Candidate embeddings are cached per encoder (safetensors under ``$TAGOOD_HOME/vlm``). The options of the methods
that mine negative labels (NegLabel, CSP, AdaNeg, KR-NFT) are declared here once: :class:`MiningOptions` and
:class:`NegativeLabelOptions`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from tagood.backbones.home import tagood_home
from tagood.backbones.prompts import fill
from tagood.core.numeric import l2_normalize
from tagood.core.validation import OpenFraction, PathLike, PosInt
from tagood.detectors.vlm.base import SeededOptions
from tagood.errors import ConfigError
from tagood.runtime.fileio import atomic_write_with
from tagood.runtime.progress import progress_bar

log = logging.getLogger(__name__)


class MiningOptions(SeededOptions):
    """Options of every method that mines negative labels from a pool of words (NegLabel, CSP, AdaNeg, KR-NFT)."""

    eta: OpenFraction = Field(0.05, description="NegMining's percentile: a candidate's distance to the IND labels is the "
                                                "eta-percentile of its negative cosines to them (the paper: 0.05)")
    max_candidates: PosInt | None = Field(None, description="mine from a seeded subsample of this many candidate words "
                                                            "(none = all; bounds the one-off text encoding on a CPU)")


class NegativeLabelOptions(MiningOptions):
    """NegLabel's negative labels: the ``n_neg`` candidates of a corpus farthest from the IND labels (NegLabel,
    AdaNeg, KR-NFT)."""

    n_neg: PosInt = Field(10000, description="negative labels kept: the candidates farthest from the IND labels "
                                             "(the paper: 10,000)")
    corpus: PathLike | list[str] | None = Field(None, description="candidate words: none = the WordNet nouns and "
                                                                  "adjectives, a word-list file, or a list of words")
    neg_words: list[str] | None = Field(None, description="these negative labels instead of mined ones")


def text_embeddings(encoder: Any, texts: Sequence[str], cache_dir: str | Path | Literal[False] | None = None, chunk: int = 2048,
                    desc: str = "encode texts") -> np.ndarray:
    """``encoder.encode_texts(texts)`` in chunks with a progress bar, cached on disk by encoder and text list.

    Args:
        encoder: a dual encoder (``encode_texts``; ``id`` and ``weights_hash`` key the cache).
        texts: the prompts.
        cache_dir: the cache folder (None = ``$TAGOOD_HOME/vlm``; False = no cache). Lists under 1,000 texts are not
            stored.
        chunk: texts per ``encode_texts`` call; ``desc``: the progress bar's label.
    Returns:
        ``(len(texts), E)`` float32 L2-normalised embeddings.
    """
    texts = list(texts)
    key = hashlib.sha256("\n".join([str(getattr(encoder, "id", type(encoder).__name__)),
                                    str(getattr(encoder, "weights_hash", "")), *texts]).encode()).hexdigest()[:20]
    path = None
    if cache_dir is not False:
        path = (Path(cache_dir) if cache_dir else tagood_home() / "vlm") / f"texts-{key}.safetensors"
        if path.is_file():
            from safetensors.numpy import load_file

            try:
                return load_file(str(path))["embeds"]
            except (OSError, KeyError, ValueError) as e:
                log.warning("ignoring unreadable text-embedding cache %s (%s)", path, e)
    out = []
    with progress_bar(desc, len(texts), enabled=len(texts) > chunk) as advance:
        for a in range(0, len(texts), chunk):
            out.append(l2_normalize(encoder.encode_texts(texts[a : a + chunk]), dtype=np.float32))
            advance(len(out[-1]))
    emb = np.concatenate(out) if out else np.zeros((0, int(getattr(encoder, "embed_dim", 0))), np.float32)
    if path is not None and len(texts) >= 1000:  # small lists are cheaper to recompute than to store
        from safetensors.numpy import save_file

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_with(path, lambda tmp: save_file({"embeds": np.ascontiguousarray(emb)}, str(tmp)))
        except OSError as err:
            log.warning("cannot write the text-embedding cache %s: %s", path, err)
    return emb


def neg_distance(candidates: np.ndarray, ind: np.ndarray, eta: float = 0.05, chunk: int = 8192) -> np.ndarray:
    """NegMining distance of each candidate: the ``eta``-percentile of ``-cos(candidate, IND label)``.

    Args:
        candidates: ``(M, E)`` candidate label embeddings; ``ind``: ``(C, E)`` IND label embeddings.
        eta: the percentile, in (0, 1]; ``chunk``: candidates per block.
    Returns:
        ``(M,)`` float64 distances: larger = farther from every IND label.
    """
    c, y = l2_normalize(candidates, dtype=np.float32), l2_normalize(ind, dtype=np.float32)
    out = np.empty(len(c), dtype=np.float64)
    for a in range(0, len(c), chunk):
        out[a : a + chunk] = np.quantile(-(c[a : a + chunk] @ y.T).astype(np.float64), eta, axis=1)
    return out


def mine_negatives(candidate_embeds: np.ndarray, ind_embeds: np.ndarray, n: int = 10000, eta: float = 0.05) -> np.ndarray:
    """Indices of the ``n`` candidates farthest from the IND labels (NegMining), most distant first.

    Args:
        candidate_embeds: ``(M, E)``; ``ind_embeds``: ``(C, E)``; ``n``: how many to keep; ``eta``: NegMining's percentile.
    Returns:
        ``(min(n, M),)`` int64 indices into ``candidate_embeds``.
    """
    d = neg_distance(candidate_embeds, ind_embeds, eta)
    n = min(int(n), len(d))
    top = np.argpartition(-d, n - 1)[:n] if n < len(d) else np.arange(len(d))
    return top[np.argsort(-d[top], kind="stable")]


def negative_labels(encoder: Any, ind_names: Sequence[str], ind_embeds: np.ndarray, n: int = 10000, eta: float = 0.05,
                    corpus: str | Path | Sequence[str] | None = None, template: str = "a photo of a {}.",
                    max_candidates: int | None = None, seed: int = 0,
                    cache_dir: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """Mine ``n`` negative labels for the IND labels (NegLabel's NegMining).

    Args:
        encoder: the dual encoder (``encode_texts``).
        ind_names: the IND class names (words equal to one, case-insensitive, are dropped from the pool).
        ind_embeds: ``(C, E)`` IND prompt embeddings.
        n: labels to keep; ``eta``: NegMining's percentile.
        corpus: None for the WordNet nouns + adjectives (:mod:`tagood.detectors.vlm.wordnet`), a word-list file, or
            a list of words.
        template: the prompt template of the candidates.
        max_candidates: a seeded subsample of the pool (bounds the one-off encoding cost on a CPU); ``seed``: its seed.
        cache_dir: the text-embedding cache (:func:`text_embeddings`).
    Returns:
        ``(words, embeddings)``: the kept labels, farthest first, and their ``(n, E)`` float32 prompt embeddings.
    """
    from tagood.detectors.vlm.wordnet import read_word_list, wordnet_words

    if corpus is None:
        words = wordnet_words()
    elif isinstance(corpus, (str, Path)):
        words = read_word_list(corpus)
    else:
        words = list(dict.fromkeys(str(w) for w in corpus))
    ind_low = {str(n_).lower().replace("_", " ") for n_ in ind_names}
    words = [w for w in words if w.lower() not in ind_low]
    if max_candidates is not None and len(words) > max_candidates:
        keep = np.sort(np.random.default_rng(seed).choice(len(words), int(max_candidates), replace=False))
        words = [words[i] for i in keep]
    if not words:
        raise ConfigError("the negative-label corpus is empty after removing the IND names: give a larger corpus "
                          "(option corpus: a word-list file or a list of words; none = WordNet)")
    emb = text_embeddings(encoder, fill(words, template), cache_dir, desc="encode negative-label candidates")
    idx = mine_negatives(emb, ind_embeds, n, eta)
    log.info("NegMining: kept %d of %d candidate labels (eta=%.2f)", len(idx), len(words), eta)
    return [words[i] for i in idx], emb[idx]


def mine_fraction(candidate_embeds: np.ndarray, ind_embeds: np.ndarray, ratio: float = 0.15, eta: float = 0.05,
                  max_sim: float | None = 0.95) -> np.ndarray:
    """Indices of the ``ratio`` fraction (floored) of candidates farthest from the IND labels, most distant first.

    The NegMining distance (:func:`neg_distance`, the ``eta``-percentile of ``-cos``) ranks them, as in CSP's
    released code (its "0.95-quantile of the cosine" is the same quantity with the sign flipped); candidates whose
    largest cosine to an IND label exceeds ``max_sim`` (near-duplicates of an IND label) are never kept.

    Args:
        candidate_embeds: ``(M, E)``; ``ind_embeds``: ``(C, E)``.
        ratio: the share kept, in (0, 1]; ``eta``: NegMining's percentile; ``max_sim``: the near-duplicate cut
            (None = none).
    Returns:
        int64 indices into ``candidate_embeds``, farthest first.
    """
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"ratio must be in (0, 1], got {ratio}")
    d = neg_distance(candidate_embeds, ind_embeds, eta)
    if max_sim is not None and len(d):
        top = np.empty(len(d))
        c, y = l2_normalize(candidate_embeds, dtype=np.float32), l2_normalize(ind_embeds, dtype=np.float32)
        for a in range(0, len(c), 8192):
            top[a : a + 8192] = (c[a : a + 8192] @ y.T).max(axis=1)
        d = np.where(top > max_sim, -np.inf, d)
    n = int(len(d) * ratio)
    order = np.argsort(-d, kind="stable")[:n]
    return order[np.isfinite(d[order])]


def position_similarity(candidates: np.ndarray, ind: np.ndarray, q: float = 0.95, chunk: int = 8192) -> np.ndarray:
    """KR-NFT's mining statistic (its public code, ``openood/networks/clip_krnft.py:460-467``): each candidate's cosines
    to the K IND labels sorted ascending, the value at position ``int(K * q)`` (no interpolation).

    Args:
        candidates: ``(M, E)`` candidate embeddings; ``ind``: ``(K, E)`` IND label embeddings.
        q: the position as a share of K (0.95: the 5th-largest-percent cosine); ``chunk``: candidates per block.
    Returns:
        ``(M,)`` float64 cosines: smaller = farther from the IND labels.
    """
    c, y = l2_normalize(candidates, dtype=np.float32), l2_normalize(ind, dtype=np.float32)
    pos = min(int(len(y) * q), len(y) - 1)
    out = np.empty(len(c), dtype=np.float64)
    for a in range(0, len(c), chunk):
        out[a : a + chunk] = np.sort((c[a : a + chunk] @ y.T).astype(np.float64), axis=1)[:, pos]
    return out


def mine_by_position(noun_embeds: np.ndarray, adj_embeds: np.ndarray, ind_embeds: np.ndarray, n: int = 10500,
                     q: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """KR-NFT's negative mining (``clip_krnft.py:457-475``): nouns and adjectives ranked separately by
    :func:`position_similarity`, the ``n`` kept shared between them in proportion to their pool sizes
    (``n_adj = int(n * A / (A + N))``, ``n_noun = n - n_adj``), the least similar of each kept.

    Args:
        noun_embeds: ``(N, E)`` noun candidates; ``adj_embeds``: ``(A, E)`` adjective candidates; ``ind_embeds``: ``(K, E)``.
        n: negatives kept in all; ``q``: the sorted position's share of K.
    Returns:
        ``(adj_idx, noun_idx)``: int64 indices into each pool, least similar first.
    """
    a, m = len(adj_embeds), len(noun_embeds)
    if a + m == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n_adj = int(int(n) * (a / (a + m)))
    n_noun = int(n) - n_adj
    sa = position_similarity(adj_embeds, ind_embeds, q) if a else np.zeros(0)
    sn = position_similarity(noun_embeds, ind_embeds, q) if m else np.zeros(0)
    return np.argsort(sa, kind="stable")[:n_adj].astype(np.int64), np.argsort(sn, kind="stable")[:n_noun].astype(np.int64)


def split_pool(ind_names: Sequence[str], corpus: str | Path | Sequence[str] | None, max_candidates: int | None,
               seed: int) -> tuple[list[str], list[str]]:
    """The candidate ``(nouns, adjectives)``: WordNet's noun and adjective lemmas (a word that is both counts as a
    noun, as the public code's ``Deduplication(adj_list, noun_list)``) or, for a given corpus, all its words as nouns;
    IND names removed; ``max_candidates`` a seeded subsample of the two pools together (as :func:`negative_labels`)."""
    from tagood.detectors.vlm.wordnet import read_word_list, wordnet_words

    if corpus is None:
        nouns = wordnet_words(("noun",))
        noun_low = {w.lower() for w in nouns}
        adjs = [w for w in wordnet_words(("adj",)) if w.lower() not in noun_low]
    else:
        nouns = read_word_list(corpus) if isinstance(corpus, (str, Path)) else list(dict.fromkeys(str(w) for w in corpus))
        adjs = []
    ind_low = {str(n_).lower().replace("_", " ") for n_ in ind_names}
    nouns = [w for w in nouns if w.lower() not in ind_low]
    adjs = [w for w in adjs if w.lower() not in ind_low]
    if max_candidates is not None and len(nouns) + len(adjs) > max_candidates:
        keep = np.sort(np.random.default_rng(seed).choice(len(nouns) + len(adjs), int(max_candidates), replace=False))
        nouns, adjs = [nouns[i] for i in keep if i < len(nouns)], [adjs[i - len(nouns)] for i in keep if i >= len(nouns)]
    if not nouns and not adjs:
        raise ConfigError("the negative-label corpus is empty after removing the IND names: give a larger corpus "
                          "(option corpus: a word-list file or a list of words; none = WordNet)")
    return nouns, adjs


def negative_labels_by_position(encoder: Any, ind_names: Sequence[str], ind_embeds: np.ndarray, n: int = 10500,
                                noun_template: str = "the nice {}.", adj_template: str = "This is a {} photo.",
                                corpus: str | Path | Sequence[str] | None = None, max_candidates: int | None = None,
                                seed: int = 0, q: float = 0.95,
                                cache_dir: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """KR-NFT's negative labels (its public code; used by the ``paper`` / ``official`` presets of KR-NFT): nouns
    prompted with ``noun_template``, adjectives with ``adj_template``, mined by :func:`mine_by_position`.

    Args:
        encoder: the dual encoder; ``ind_names``: the IND class names; ``ind_embeds``: ``(K, E)`` IND prompt embeddings.
        n: negatives kept; ``noun_template`` / ``adj_template``: the two prompts; ``corpus``: as :func:`split_pool`;
        max_candidates: a seeded subsample of the pool; ``seed``: its seed; ``q``: the sorted position's share of K;
        cache_dir: the text-embedding cache (:func:`text_embeddings`).
    Returns:
        ``(words, embeddings)``: the adjectives then the nouns (as the public code orders its rows), each least
        similar first, and their ``(n, E)`` float32 prompt embeddings.
    """
    nouns, adjs = split_pool(ind_names, corpus, max_candidates, seed)
    e_noun = text_embeddings(encoder, fill(nouns, noun_template), cache_dir, desc="encode negative-label nouns")
    e_adj = text_embeddings(encoder, fill(adjs, adj_template), cache_dir, desc="encode negative-label adjectives")
    ia, inn = mine_by_position(e_noun, e_adj, ind_embeds, n, q)
    log.info("KR-NFT mining: kept %d of %d adjectives and %d of %d nouns (position %.2f)", len(ia), len(adjs), len(inn),
             len(nouns), q)
    return [adjs[i] for i in ia] + [nouns[i] for i in inn], np.concatenate([e_adj[ia], e_noun[inn]]).astype(np.float32)
