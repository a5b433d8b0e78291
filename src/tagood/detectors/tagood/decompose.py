"""Image-feature decomposition into object tokens (TagOOD paper, section 3.3, Fig. 2a).

For each kept IND tag of an image, its attention over the N tokens is min-max normalised; the
maps of all kept tags are combined by a maximum, giving each token a value in [0, 1]. The exact rule:

* ``tau > 0``: a token is kept when its combined value is **strictly greater** than ``tau`` (the
  paper's "values above [the threshold] become 1", section 3.3). ``tau = 0.5`` is the paper's best.
* ``tau <= 0``: **every** token is kept -- the paper's "all image features" point of Fig. 3 (before,
  ``> 0`` silently dropped each image's lowest-attention tokens at tau = 0).
* an image never ends with no token (``tau >= 1``): its best token is kept.
* an image without a kept IND tag gets an all-True mask (all of its tokens: the fallback used for
  untagged training images, for ``test_tokens="all"`` and for ``no_tag="fallback"``).

Kept tokens keep their spatial position index. The same rule is applied to IND training, IND test
and OOD data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tagood.core.types import TagAttention, TokenSet

#: the ``FeatureSet.extra`` entry that holds each image's oracle tokens, (N, T) bool: the tokens of what stands in
#: the object's place by the source's ground truth (``decompose="oracle"``, a diagnostic; see :func:`oracle_mask`)
ORACLE_FIELD = "oracle_tokens"


@dataclass(frozen=True)
class TagRule:
    """Which of an image's tags are kept: among its stored top-``top_k`` tags, those with probability
    > ``threshold`` (a scalar or one threshold per tag, e.g. RAM's per-tag file). The detectors build
    it from their ``tag_threshold`` option: ``None`` (no threshold given) means the tagger's own
    per-tag thresholds when it has them, else 0.0; a number is one uniform threshold for every tag."""

    threshold: float | np.ndarray = 0.0
    top_k: int = 10

    def kept(self, attn: TagAttention, tag_probs: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """Which stored tag slots of each image are kept.

        Args:
            attn: the stored tags ``ids`` (N,k) and their attention maps.
            tag_probs: ``(N, T)`` the tagger's probability of each tag.
            allowed: tag ids that may be kept (the IND vocabulary's); ``None``: any.
        Returns:
            Boolean ``(N, k)``: tag slot ``j`` of image ``i`` is kept.
        """
        ids = np.asarray(attn.ids)
        k = min(self.top_k, ids.shape[1])
        p = np.take_along_axis(np.asarray(tag_probs), ids, axis=1)
        thr = self.threshold if np.isscalar(self.threshold) else np.asarray(self.threshold)[ids]
        keep = p > thr
        keep[:, k:] = False
        if allowed is not None:
            keep &= np.isin(ids, allowed)
        return keep

    def key(self) -> str:
        """A short text naming the rule (threshold, or a hash of the per-tag thresholds, and top-k)."""
        thr = self.threshold
        t = str(thr) if np.isscalar(thr) else f"pertag{hash(np.asarray(thr).tobytes()) & 0xffffffff:x}"
        return f"thr={t},top_k={self.top_k}"


def minmax(maps: np.ndarray) -> np.ndarray:
    """Each map min-max normalised over its last axis (a constant map becomes all ones).

    Args:
        maps: attention maps, any shape ``(..., T)``.
    Returns:
        The normalised maps, same shape, in ``[0, 1]``.
    """
    lo = maps.min(axis=-1, keepdims=True)
    hi = maps.max(axis=-1, keepdims=True)
    rng = hi - lo
    return np.where(rng > 0, (maps - lo) / np.where(rng > 0, rng, 1.0), 1.0)


def token_mask(maps: np.ndarray, keep: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """The object tokens of each image (TagOOD paper section 3.3).

    Token ``t`` of the mask is token ``t`` of the image's (undecomposed) token set. Rule (module
    docstring): keep ``combined > tau`` for ``tau > 0``; keep all tokens for ``tau <= 0``. Images
    without a kept tag get an all-True mask (their tokens are all available, e.g. for
    ``test_tokens="all"`` or the all-tokens fallback); ``has_tag`` says they had none.

    Args:
        maps: ``(N, k, T)`` raw attention of each stored tag over the ``T`` tokens.
        keep: ``(N, k)`` the kept tag slots (:meth:`TagRule.kept`).
        tau: the threshold on the combined min-max-normalised attention.
    Returns:
        ``(mask (N, T) bool, has_tag (N,) bool)``.

    Example:
        >>> import numpy as np
        >>> token_mask(np.array([[[0.0, 1.0, 3.0, 4.0]]]), np.array([[True]]), 0.5)
        (array([[False, False,  True,  True]]), array([ True]))
    """
    norm = minmax(np.asarray(maps, dtype=np.float64))
    norm = np.where(keep[:, :, None], norm, -np.inf)
    combined = norm.max(axis=1)  # (N,T)
    has = np.asarray(keep.any(axis=1))  # (N,) bool; np.asarray is a no-op here that types it as an array
    mask = combined > tau if tau > 0 else np.ones(combined.shape, dtype=bool)
    mask[~has] = True
    # never leave an image with no token (e.g. tau >= 1): keep its best token
    empty = ~mask.any(axis=1)
    if empty.any():
        best = np.argmax(np.where(np.isfinite(combined), combined, -1.0), axis=1)
        mask[empty, best[empty]] = True
    return mask, has


def select_tokens(tokens: TokenSet, mask: np.ndarray) -> TokenSet:
    """The tokens where ``mask`` is True, in their order, with their spatial positions.

    Args:
        tokens: every image's ``T`` tokens (the undecomposed cache).
        mask: ``(N, T)`` bool, e.g. from :func:`token_mask`.
    Returns:
        The kept tokens as a ragged token set.
    Raises:
        ValueError: an image does not hold all ``T`` tokens.
    """
    lens = tokens.lengths
    if not np.all(lens == mask.shape[1]):
        raise ValueError("select_tokens needs every image to hold all T tokens (the undecomposed cache)")
    flat = mask.reshape(-1)
    new_lens = mask.sum(axis=1)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(new_lens, out=offsets[1:])
    return TokenSet(tokens.values[flat], offsets, tokens.positions[flat])


def mean_tokens(tokens: TokenSet, chunk: int = 4096) -> np.ndarray:
    """The mean of each image's token set (CS's feature).

    Args:
        tokens: a (ragged) token set of ``N`` images.
        chunk: images summed at a time (bounded memory for memory-mapped token sets).
    Returns:
        ``(N, D)`` float64 means.
    """
    out = np.zeros((len(tokens), tokens.dim), dtype=np.float64)
    for a in range(0, len(tokens), chunk):
        b = min(a + chunk, len(tokens))
        lo, hi = int(tokens.offsets[a]), int(tokens.offsets[b])
        cs = np.zeros((hi - lo + 1, tokens.dim), dtype=np.float64)
        np.cumsum(np.asarray(tokens.values[lo:hi], dtype=np.float64), axis=0, out=cs[1:])
        off = tokens.offsets[a : b + 1] - lo
        out[a:b] = (cs[off[1:]] - cs[off[:-1]]) / np.maximum(np.diff(off), 1)[:, None]
    return out


def oracle_mask(oracle: np.ndarray, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The oracle decomposition: the tokens the source's true mask marks (a diagnostic, never a default).

    Args:
        oracle: ``(N, T)`` bool, the tokens of what stands in each image's object place (the IND object, the
            near-OOD object, the far item, the clutter scene's stand-in), e.g. from
            :func:`tagood.bench.diagnostics.oracle_tokens`.
        n_tokens: the images' token count ``T`` (checked).
    Returns:
        ``(mask (N, T) bool, has_tag (N,) bool)``: the oracle tokens; an image whose mask marks no token keeps all
        of them (as an untagged image does); ``has_tag`` is all True (no image is scored as untagged).
    Raises:
        ValueError: the oracle mask is not ``(N, n_tokens)``.
    """
    m = np.array(oracle, dtype=bool)
    if m.ndim != 2 or m.shape[1] != n_tokens:
        raise ValueError(f"oracle tokens of shape {m.shape} do not match the images' {n_tokens} tokens")
    m[~m.any(axis=1)] = True
    return m, np.ones(len(m), dtype=bool)


def top_tag(keep: np.ndarray, attn: TagAttention, tag_probs: np.ndarray) -> np.ndarray:
    """Of each image's kept tag slots, only the most likely one (``tag_maps="top"``: the object box from the single
    most likely IND tag's attention rather than the union of all kept tags').

    Args:
        keep: ``(N, k)`` the kept tag slots (:meth:`TagRule.kept`).
        attn: the stored tag ids ``(N, k)``.
        tag_probs: ``(N, T)`` the tagger's probability of each tag.
    Returns:
        ``(N, k)`` bool: at most one True per row, the kept slot with the highest probability.
    """
    p = np.take_along_axis(np.asarray(tag_probs, dtype=np.float64), np.asarray(attn.ids), axis=1)
    p = np.where(keep, p, -np.inf)
    out = np.zeros_like(keep, dtype=bool)
    rows = np.flatnonzero(keep.any(axis=1))
    out[rows, np.argmax(p[rows], axis=1)] = True
    return out
