"""TagOOD scores against class centres (higher = more OOD).

* ``cosine`` (paper Eq. 6, default): -max_c cos(f, centre_c).
* ``chunk`` (the public code's variant): centres and features split into 4 chunks of dim/4,
  mean of the per-chunk cosines, max over classes, times the image's max kept-tag probability; negated.
  Its strength comes almost entirely from the tag-probability factor (on our tokens on ``fashion`` that
  factor alone gives 82.05 vs 82.18 average AUROC for the full score).
* ``euclid`` (paper Table 4): min_c ||f - centre_c||.
* ``kl`` (paper Table 4; the paper does not define it, our reading): min_c KL(softmax(centre_c) || softmax(f)),
  feature and centre turned into distributions over dimensions by a softmax.

An image with no kept IND tag is OOD (paper section 3.5): under the detectors' ``no_tag="ood"`` it
gets ``NO_TAG_SCORE``, a finite value larger than any score of any type, on IND test and OOD data
alike (``no_tag="fallback"`` scores it with all of its tokens instead).
"""

from __future__ import annotations

import numpy as np

from tagood.core.numeric import l2_normalize, log_softmax

NO_TAG_SCORE = 1e12
SCORES = ("cosine", "chunk", "euclid", "kl")


def centre_score(feats: np.ndarray, centres: np.ndarray, kind: str = "cosine", tag_prob: np.ndarray | None = None,
                 chunks: int = 4) -> np.ndarray:
    """OOD score of each feature against the class centres (module docstring): **higher = more OOD**.

    Args:
        feats: ``(N, d)`` features (TagOOD: the projector's; CS: the mean of the object tokens).
        centres: ``(C, d)`` IND class centres.
        kind: ``cosine`` (paper Eq. 6), ``euclid``, ``kl`` (paper Table 4) or ``chunk`` (the public code's).
        tag_prob: ``(N,)`` the max kept-tag probability of each image (``chunk`` only; default 1).
        chunks: the number of chunks of ``chunk``; it must divide ``d``.
    Returns:
        ``(N,)`` float64 scores.
    Raises:
        ValueError: an unknown ``kind``, or ``d`` not divisible by ``chunks``.

    Example:
        >>> import numpy as np
        >>> centre_score(np.array([[2.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])).round(4)
        array([-1.    , -0.7071])
    """
    f = np.asarray(feats, dtype=np.float64)
    c = np.asarray(centres, dtype=np.float64)
    if kind == "cosine":
        return -(l2_normalize(f) @ l2_normalize(c).T).max(axis=1)
    if kind == "chunk":
        if f.shape[1] % chunks:
            raise ValueError(f"chunk score: feature dim {f.shape[1]} is not divisible by {chunks}")
        fs = l2_normalize(f.reshape(len(f), chunks, -1))
        cs = l2_normalize(c.reshape(len(c), chunks, -1))
        sim = np.einsum("nkd,ckd->nck", fs, cs).mean(axis=2).max(axis=1)
        p = np.ones(len(f)) if tag_prob is None else np.asarray(tag_prob, dtype=np.float64)
        return -sim * p
    if kind == "euclid":
        d2 = (f * f).sum(1)[:, None] - 2.0 * f @ c.T + (c * c).sum(1)[None, :]
        return np.sqrt(np.maximum(d2, 0.0)).min(axis=1)
    if kind == "kl":
        lf, lc = log_softmax(f), log_softmax(c)
        pc = np.exp(lc)
        # KL(pc || pf) = sum pc (lc - lf) = sum pc lc - pc . lf
        kl = (pc * lc).sum(1)[None, :] - lf @ pc.T
        return kl.min(axis=1)
    raise ValueError(f"unknown score '{kind}'; use one of {SCORES}")
