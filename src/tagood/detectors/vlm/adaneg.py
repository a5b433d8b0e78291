"""AdaNeg: adaptive negative proxies built at test time (Zhang & Zhang, "AdaNeg: Adaptive Negative Proxy
Guided OOD Detection with Vision-Language Models", NeurIPS 2024). The first **test-time** detector here:
the score of a sample depends on the test samples seen before it.

Method (paper section 3; defaults of the released ImageNet script, ``scripts/ood/adaneg/imagenet.sh``):

* Labels: the IND class prompts and NegLabel's mined negative labels (Jiang et al., ICLR 2024), ``K = C + M``.
* **Memory**: one slot per label, holding the label's text embedding and up to ``memleng - 1 = 9`` test image
  embeddings (the released code allocates ``memleng`` rows after the text row and its fill counter starts at 1,
  so 9 are ever filled; we keep that capacity). Bounded: at most ``K x (memleng - 1)`` stored features
  (ImageNet: 11,000 x 9 x 512 float32 = 203 MB), plus a ``K x memleng x memleng`` Gram cache.
* **Gating by the NegLabel score** ``S`` (IND softmax share, ``tau = 0.01``, ``ngroup = 5`` random groups):
  a test feature with ``S > thres + gap (1 - thres)`` (0.75) is written to the slot of its most likely IND
  class, one with ``S < thres - gap thres`` (0.25) to the slot of its most likely negative label
  (``thres = 0.5``, ``gap = 0.5``). When a slot is full, the new feature replaces the stored one of largest
  entropy if its own entropy is lower (entropy of the softmax over the IND, resp. negative, logits), so a
  slot always holds the lowest-entropy features routed to it so far.
* **Task-adaptive proxy** of a label: the normalised mean of its slot (text + stored features).
  **Sample-adaptive proxy** (the paper's final form, ``proxies="sample"``): the slot's entries weighted by
  their affinity to the test feature ``x``, ``exp(-beta (1 - x.m))`` with ``beta = 5.5``, summed and normalised.
* **Score**: NegLabel's IND share computed on the adaptive proxies ``S_ada``, combined with the static one:
  ``S_ada + lambda S`` with ``lambda = 0.1`` (``in_score = combine`` in the released code).

Batched semantics (no per-image Python loop): a batch first updates the memory with all its gated samples,
then every sample of the batch is scored against the updated memory -- exactly what the released code does
with its batches (its per-image loop only performs the writes). The write rule "keep the ``memleng - 1``
lowest-entropy features of each slot, ties to the earlier one" is applied to the batch at once; it gives the
same memory as writing the batch's samples one at a time in stream order (tested against such a loop).
Consequences: the memory after a stream depends only on the *set* of samples seen, not their order; the
scores of one batch are invariant to permuting the samples inside it; scores across batches depend on the
stream order (seeded in :mod:`tagood.bench.stream`).

Score (ours, **higher = more OOD**): ``-(S_ada + lambda S)``.

Zero-shot like NegLabel (its labels come from the text encoder alone), and **not saveable**: its state is the test
stream itself (the memory starts empty on every stream); ``tagood bench`` scores it on one seeded stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar, Literal, get_args

import numpy as np
from pydantic import Field

from tagood.core.featureset import FeatureSet
from tagood.core.numeric import l2_normalize, softmax
from tagood.core.validation import Fraction, NonNegFloat, PosInt
from tagood.detectors.registry import register
from tagood.detectors.vlm.neglabel import NegLabel, grouped_share

log = logging.getLogger(__name__)

PAPER = "Zhang & Zhang, AdaNeg: Adaptive Negative Proxy Guided OOD Detection with Vision-Language Models, NeurIPS 2024"

#: The proxy kinds: ``sample`` (sample-adaptive, the paper's final form) or ``task`` (task-adaptive mean).
Proxies = Literal["sample", "task"]
PROXIES: tuple[str, ...] = get_args(Proxies)


def softmax_entropy(z: np.ndarray) -> np.ndarray:
    """Entropy (nats) of ``softmax(z)`` per row.

    Args:
        z: ``(B, K)`` logits.
    Returns:
        ``(B,)`` float64 entropies.
    """
    p = softmax(z, axis=1)
    return -(p * np.log(p + 1e-300)).sum(axis=1)


class ProxyMemory:
    """The bounded per-label feature memory of AdaNeg: ``K`` slots of ``cap`` image features beside each
    label's text embedding, with the entropy and arrival index of each stored feature and a Gram cache
    ``[text; features] [text; features]^T`` per slot (for the norms of the sample-adaptive proxies)."""

    def __init__(self, text: np.ndarray, cap: int) -> None:
        self.text = l2_normalize(text).astype(np.float32)
        k, d = self.text.shape
        self.cap = int(cap)
        self.feats = np.zeros((k, self.cap, d), np.float32)
        self.ent = np.full((k, self.cap), np.inf)
        self.seq = np.full((k, self.cap), np.iinfo(np.int64).max, np.int64)
        self.count = np.zeros(k, np.int64)
        self.gram = np.zeros((k, self.cap + 1, self.cap + 1))
        self.gram[:, 0, 0] = (self.text.astype(np.float64) ** 2).sum(axis=1)
        self.seen = 0

    def __len__(self) -> int:
        """Number of stored image features."""
        return int(self.count.sum())

    def insert(self, slots: np.ndarray, ent: np.ndarray, feats: np.ndarray) -> None:
        """Offer features to slots: each slot keeps its ``cap`` lowest-entropy features (ties: earlier first).

        Args:
            slots: ``(n,)`` slot of each feature, in arrival order; ``ent``: ``(n,)`` their entropies;
            feats: ``(n, E)`` the unit features.
        """
        n = len(slots)
        seq = self.seen + np.arange(n, dtype=np.int64)
        self.seen += n
        if n == 0 or self.cap == 0:
            return
        touched = np.unique(slots)
        t, c, d = len(touched), self.cap, self.feats.shape[2]
        all_slot = np.concatenate([np.repeat(touched, c), slots])
        all_ent = np.concatenate([self.ent[touched].ravel(), ent])
        all_seq = np.concatenate([self.seq[touched].ravel(), seq])
        all_feat = np.concatenate([self.feats[touched].reshape(t * c, d), feats.astype(np.float32)])
        order = np.lexsort((all_seq, all_ent, all_slot))
        s_sorted = all_slot[order]
        rank = np.arange(len(order)) - np.searchsorted(s_sorted, s_sorted, side="left")
        keep = order[rank < c]
        ks, kr = all_slot[keep], rank[rank < c]
        self.feats[ks, kr] = all_feat[keep]
        self.ent[ks, kr] = all_ent[keep]
        self.seq[ks, kr] = all_seq[keep]
        empty = ~np.isfinite(self.ent[touched])
        self.feats[touched[:, None].repeat(c, 1)[empty], np.nonzero(empty)[1]] = 0.0
        self.count[touched] = (~empty).sum(axis=1)
        rows = np.concatenate([self.text[touched][:, None, :], self.feats[touched]], axis=1).astype(np.float64)
        self.gram[touched] = rows @ rows.transpose(0, 2, 1)

    def cosines(self, x: np.ndarray, proxies: str = "sample", beta: float = 5.5, chunk: int = 64) -> np.ndarray:
        """Cosine of each (unit) row of ``x`` with every slot's adaptive proxy, (B, K) float64.

        Never forms the (B, K, D) proxies: ``x.p = sum_j w_j x.m_j / ||sum_j w_j m_j||`` with the squared norm
        ``w^T G w`` from the slot's Gram cache; rows of ``x`` go ``chunk`` at a time to bound the (B, K, cap) terms.

        Args:
            x: ``(B, E)`` unit image embeddings.
            proxies: ``sample`` (weights ``exp(-beta (1 - x.m))``) or ``task`` (the slot mean); ``beta``: the sharpness.
            chunk: rows of ``x`` per block.
        Returns:
            ``(B, K)`` float64 cosines.
        """
        if len(x) > chunk:
            return np.concatenate([self.cosines(x[a : a + chunk], proxies, beta, chunk) for a in range(0, len(x), chunk)])
        c_text = (x @ self.text.T).astype(np.float64)
        occ = np.flatnonzero(self.count > 0)
        if len(occ) == 0:
            return c_text
        k, cap, d = self.feats.shape
        if 2 * len(occ) > k:  # most slots used: one product with the whole memory, no gather copy
            s = (x @ self.feats.reshape(k * cap, d).T).reshape(len(x), k, cap)[:, occ].astype(np.float64)
        else:
            s = (x @ self.feats[occ].reshape(len(occ) * cap, d).T).reshape(len(x), len(occ), cap).astype(np.float64)
        valid = np.isfinite(self.ent[occ])[None]
        ct = c_text[:, occ]
        if proxies == "sample":
            wt = np.exp(-beta * (1.0 - ct))
            w = np.where(valid, np.exp(-beta * (1.0 - s)), 0.0)
        else:
            wt = np.ones_like(ct)
            w = np.broadcast_to(valid, s.shape).astype(np.float64)
        num = wt * ct + (w * s).sum(axis=2)
        wall = np.concatenate([wt[..., None], w], axis=2)  # (B, O, cap+1)
        norm2 = np.einsum("boi,oij,boj->bo", wall, self.gram[occ], wall, optimize=True)
        out = c_text.copy()
        out[:, occ] = num / np.sqrt(np.maximum(norm2, 1e-24))
        return out


@register("adaneg")
class AdaNeg(NegLabel):
    """AdaNeg (Zhang & Zhang, NeurIPS 2024), test-time: ``-(S_ada + lam S)``, higher = more OOD. The negative labels
    and ``n_neg``, ``eta``, ``tau``, ``corpus``, ``max_candidates`` are NegLabel's (:class:`NegLabel`); defaults of
    the released ImageNet script.

    :meth:`score_stream` starts with an empty memory and carries it across the batches of one stream;
    :meth:`score` treats its input as one such stream, in the given order, in batches of ``batch_size``.
    """

    class Options(NegLabel.Options):
        ngroup: PosInt = Field(5, description="random groups of negative labels the IND share is averaged over (the "
                                              "released script: 5)")
        thres: Fraction = Field(0.5, description="gating threshold on the NegLabel score (the paper: 0.5)")
        gap: Fraction = Field(0.5, description="gating margin: a sample is written to memory above thres + gap (1 - "
                                               "thres) or below thres - gap thres (the paper: 0.5)")
        memleng: PosInt = Field(10, description="memory length per label; memleng - 1 test features are stored, as in "
                                                "the released code (the paper: 10)")
        beta: NonNegFloat = Field(5.5, description="sharpness of the sample-adaptive proxy weights exp(-beta (1 - x.m)) "
                                                   "(the paper: 5.5)")
        lam: NonNegFloat = Field(0.1, description="weight of the static NegLabel share in S_ada + lam S (the paper: 0.1)")
        proxies: Proxies = Field("sample", description="sample: sample-adaptive proxies (the paper's final form); "
                                                       "task: the task-adaptive slot mean")
        batch_size: PosInt = Field(256, description="test samples per memory update: a batch is written, then scored")

    options: Options
    paper: ClassVar[str] = PAPER
    test_time: ClassVar[bool] = True
    saveable: ClassVar[bool] = False
    not_saveable_reason: ClassVar[str] = ("test-time: its state is the test stream itself (a memory that starts empty on "
                                          "every stream); score it with `tagood bench`, or build it again with "
                                          "det.attach(tagood.Context(dual_encoder=..., class_names=[...]))")

    def _clear(self) -> None:
        super()._clear()
        self.memory: ProxyMemory | None = None

    # -- stream state ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty the memory (a new test stream)."""
        text, neg = self._prompt_rows(), self._negatives()
        self.memory = ProxyMemory(np.concatenate([l2_normalize(text), l2_normalize(neg)]), self.options.memleng - 1)

    def score(self, data: FeatureSet | np.ndarray) -> np.ndarray:
        """OOD scores of ``data`` taken as one test stream in its order (the memory emptied first), in batches of
        ``batch_size``: **higher = more OOD**.

        Args:
            data: a FeatureSet with ``image_embeds``, or the ``(N, E)`` array.
        Returns:
            ``(N,)`` float64 scores.
        """
        self.memory = None
        return super().score(data)

    def score_stream(self, batches: Iterable[FeatureSet]) -> np.ndarray:
        """OOD scores of a stream of batches in stream order; the memory starts empty and carries across batches.

        Args:
            batches: FeatureSets with ``image_embeds``, in stream order.
        Returns:
            float64 scores of every batch's samples, concatenated: **higher = more OOD**.
        """
        self.reset()
        parts = []
        for b in batches:
            b = self._coerce(b)
            self._require(b, self.requires, "score_stream")
            parts.append(self.step(np.asarray(b.image_embeds)))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)

    def _score(self, data: FeatureSet) -> np.ndarray:
        x = np.asarray(data.image_embeds)
        bs = self.options.batch_size
        return np.concatenate([self.step(x[a : a + bs]) for a in range(0, len(x), bs)] or [np.zeros(0)])

    def step(self, image_embeds: np.ndarray) -> np.ndarray:
        """Process one batch of the stream: write its gated features into the memory, then score it against the
        updated memory.

        Args:
            image_embeds: ``(B, E)`` image embeddings of the batch.
        Returns:
            ``(B,)`` float64 OOD scores, **higher = more OOD**.
        """
        if self.memory is None:
            self.reset()
        mem = self.memory
        assert mem is not None
        o = self.options
        c = len(self.class_names)
        x = l2_normalize(image_embeds).astype(np.float32)
        if len(x) == 0:
            return np.zeros(0)
        z = (x @ mem.text.T).astype(np.float64) / o.tau
        s_static = grouped_share(z[:, :c], z[:, c:], self.groups)
        hi = s_static > o.thres + o.gap * (1.0 - o.thres)
        lo = s_static < o.thres - o.gap * o.thres
        slots = np.concatenate([z[hi, :c].argmax(axis=1), c + z[lo, c:].argmax(axis=1)])
        ent = np.concatenate([softmax_entropy(z[hi, :c]), softmax_entropy(z[lo, c:])])
        rows = np.concatenate([np.flatnonzero(hi), np.flatnonzero(lo)])
        order = np.argsort(rows, kind="stable")  # arrival order within the batch = stream order
        mem.insert(slots[order], ent[order], x[rows[order]])
        za = mem.cosines(x, o.proxies, o.beta) / o.tau
        s_ada = grouped_share(za[:, :c], za[:, c:], self.groups)
        return -(s_ada + o.lam * s_static)
