"""TagOOD as detectors: the full method and the ablations of the paper's Tables 3-5 and Figs. 3/5.

TagOOD (Li et al., "TagOOD: A Novel Approach to Out-of-Distribution Detection via Vision-Language
Representations and Class Center Learning", ACM MM 2024). Scores: higher = more OOD.

Registry names: ``tagood`` (full method), ``cs`` (class means of decomposed features, no
projector), ``ce+cs`` (projector trained with CE only, class means of its features as centres),
``tagscore`` (the tagger's confidence alone). Options as variants, e.g. ``tagood[tau=0.25]``,
``tagood[score=euclid]``, ``tagood[test_tokens=all]``, ``tagood[tags=gt]``, ``tagood[mse_weight=0]``,
``tagood[no_tag=fallback]``, ``cs[vocab=frequent]``, ``tagood[preset=paper]``.

After fit, every tag-based detector gives ``token_masks(data) -> (mask (N,T), has_tag (N,))`` and
``kept_tag_ids(data)``: the decomposition exactly as used when scoring (for diagnostics).
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from tagood.detectors.base import Detector
from tagood.detectors.registry import register
from tagood.core.ragged import TokenSetSink
from tagood.detectors.tagood.decompose import TagRule, mean_tokens, select_tokens, token_mask
from tagood.detectors.tagood.projector import Projector
from tagood.detectors.tagood.scores import NO_TAG_SCORE, SCORES, centre_score
from tagood.detectors.tagood.train import DETECTOR_PRESETS, PRESETS, TrainConfig, config_dict, embed, train_projector
from tagood.detectors.tagood.vocabulary import VOCAB_RULES, Vocabulary, build_vocabulary, rank_tags, vocabulary_fit
from tagood.core.featureset import FeatureSet
from tagood.core.context import Context
from tagood.core.types import TagAttention, TokenSet

#: Vocabularies already built from a training split (TagScore, CS, (CE)+CS and TagOOD of one run share
#: them): id(train FeatureSet) -> (weak reference to it, {key: (vocabulary, rule, tags per class, fit)}).
#: Lives as long as the split does, so a run logs its vocabulary, rule choice and collisions once.
_VOCAB_MEMO: dict[int, tuple[Any, dict[tuple, tuple[Vocabulary, str, int, dict[str, float]]]]] = {}


def _vocab_memo(train: FeatureSet) -> dict[tuple, tuple[Vocabulary, str, int, dict[str, float]]]:
    """The vocabulary memo of this training split (empty for a new one)."""
    import weakref

    entry = _VOCAB_MEMO.get(id(train))
    if entry is None or entry[0]() is not train:
        for k in [k for k, (ref, _) in _VOCAB_MEMO.items() if ref() is None]:
            del _VOCAB_MEMO[k]
        entry = (weakref.ref(train), {})
        _VOCAB_MEMO[id(train)] = entry
    return entry[1]


def _kept_digest(kept: Sequence[np.ndarray], labels: np.ndarray) -> str:
    """Content hash of the kept tag ids per training image and the labels (a memo key)."""
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update(np.fromiter((len(k) for k in kept), dtype=np.int64, count=len(kept)).tobytes())
    for k in kept:
        h.update(np.ascontiguousarray(k, dtype=np.int64).tobytes())
    return h.hexdigest()

log = logging.getLogger(__name__)


NO_TAG_RULES = ("auto", "ood", "fallback")


class _TagBase(Detector):
    """Shared plumbing: tag rule, IND vocabulary, decomposition, no-tag rule.

    Options common to the tag-based detectors:

    * ``tau``: decomposition threshold (:func:`tagood.detectors.tagood.decompose.token_mask`: keep tokens whose
      combined min-max-normalised attention is ``> tau``; ``tau <= 0`` keeps every token).
    * ``tag_threshold``: ``None`` (default: no threshold given) uses the tagger's per-tag thresholds
      when the context has them (RAM's file), else 0.0; a number is one uniform threshold for all tags
      (``0.0`` really means 0.0, even with RAM).
    * ``vocab``: the IND vocabulary rule, ``frequent`` (the paper), ``specific`` (frequent in the class,
      rare in the others) or ``auto`` (default: chosen on held-out IND training images); ``per_class``:
      tags per class, ``auto`` (chosen on the same held-out part) or a number; ``vocabulary``: a file
      (overrides both). See :meth:`_select_vocab`.
    * ``no_tag``: what an image with no kept IND tag gets, on IND test and OOD data alike --
      ``ood``: the most-OOD score ``NO_TAG_SCORE`` (the paper, section 3.5); ``fallback``: it is
      scored with all of its tokens; ``auto`` (default): ``ood`` when held-out IND training images show
      that surely fewer than 5% of IND images lack a tag, else ``fallback`` (see :meth:`_choose_no_tag`).
    """

    requires = frozenset({"tokens", "tag_probs", "tag_attention"})
    fit_requires = frozenset({"tokens", "tag_probs", "tag_attention", "labels"})
    streaming_fit = True  # the vocabulary and the decomposition run chunk by chunk

    def __init__(self, tau: float = 0.5, tag_threshold: float | None = None, tag_top_k: int = 10, per_class: int | str = "auto",
                 coverage: float = 0.97, vocabulary: str | None = None, no_tag: str = "auto", vocab: str = "auto",
                 **kw: Any) -> None:
        super().__init__(tau=tau, tag_threshold=tag_threshold, tag_top_k=tag_top_k, per_class=per_class, coverage=coverage,
                         vocabulary=vocabulary, no_tag=no_tag, vocab=vocab, **kw)
        self.tau = float(tau)
        self.tag_threshold = None if tag_threshold is None else float(tag_threshold)
        self.rule = TagRule(0.0 if tag_threshold is None else float(tag_threshold), int(tag_top_k))
        if per_class != "auto" and int(per_class) < 1:
            raise ValueError("per_class must be 'auto' or >= 1")
        if no_tag not in NO_TAG_RULES:
            raise ValueError(f"no_tag must be one of {NO_TAG_RULES}, got {no_tag!r}")
        if vocab not in ("auto", *VOCAB_RULES):
            raise ValueError(f"vocab must be 'auto' or one of {VOCAB_RULES}, got {vocab!r}")
        self.per_class = per_class if per_class == "auto" else int(per_class)
        self.vocab_rule = vocab
        #: the rule and tags per class the vocabulary was built with (set at fit)
        self.vocab_rule_used: str | None = None
        self.per_class_used: int | None = None
        self.coverage = float(coverage)
        self.vocab_path = vocabulary
        self.vocab: Vocabulary | None = None
        self.no_tag = no_tag  # resolved to "ood" / "fallback" at fit time when "auto"
        #: fraction of held-out IND training images without a kept IND tag (set at fit; None if not measured)
        self.heldout_no_tag_fraction: float | None = None

    def _rule_for(self, context: Context) -> TagRule:
        """The tag rule: the tagger's per-tag thresholds (``context.tag_thresholds``) apply only
        when no ``tag_threshold`` was given (``None``); an explicit number, 0.0 included, is used as is."""
        thr = context.tag_thresholds
        if thr is not None and self.tag_threshold is None:
            return TagRule(np.asarray(thr), self.rule.top_k)
        return self.rule

    # -- the contract the diagnostics use ----------------------------------------------------------
    def _masks(self, data: FeatureSet, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask (N,T), has_tag (N,)) of one in-memory chunk, given its kept tag slots."""
        return token_mask(data.tag_attention.maps, keep, self.tau)

    def token_masks(self, data: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
        """After fit: ``(mask, has_tag)`` with ``mask`` (N,T) bool -- the tokens used to score each image --
        and ``has_tag`` (N,) bool -- the image kept at least one IND-vocabulary tag.

        Token index ``t`` is the ``t``-th token of the cached token set (EfficientNet: the row-major 7x7
        grid, no prefix token; RAM: 1 pooled token then the 12x12 patches). Exactly the masks
        :meth:`score` uses (tag rule, vocabulary, ``tau``, ``test_tokens``). Rows of images with
        ``has_tag`` False are all True: the tokens the all-tokens fallback uses; under ``no_tag="ood"``
        such an image is not scored from tokens at all (it gets ``NO_TAG_SCORE``), which ``has_tag``
        tells. A streamed FeatureSet is processed chunk by chunk (``data.iter_chunks()``)."""
        self._check_fitted()
        masks, has = [], []
        for chunk in data.iter_chunks():
            m, h = self._masks(chunk, self.kept_tags(chunk))
            masks.append(m)
            has.append(h)
        if not masks:
            return np.zeros((0, 0), bool), np.zeros(0, bool)
        return np.concatenate(masks), np.concatenate(has)

    def kept_tag_ids(self, data: FeatureSet) -> list[np.ndarray]:
        """After fit: the kept IND tag ids of each image (tag rule + vocabulary), one int64 array per
        image (empty when the image kept none); chunk by chunk for a streamed FeatureSet."""
        self._check_fitted()
        out: list[np.ndarray] = []
        for chunk in data.iter_chunks():
            keep = self.kept_tags(chunk)
            ids = np.asarray(chunk.tag_attention.ids)
            out.extend(ids[i][keep[i]].astype(np.int64) for i in range(len(ids)))
        return out

    def _check_fitted(self) -> None:
        if self.vocab is None:
            raise RuntimeError(f"{self.name}: call fit() before asking for token masks or kept tags")

    def _train_kept(self, train: FeatureSet) -> list[np.ndarray]:
        """Tag ids kept by the tag rule on each training image (before any vocabulary), chunk by chunk."""
        kept: list[np.ndarray] = []
        for chunk in train.iter_chunks():
            attn = chunk.tag_attention
            keep = self.rule.kept(attn, chunk.tag_probs)
            kept.extend(np.asarray(attn.ids[i])[keep[i]] for i in range(len(attn)))
        return kept

    def _build_vocab(self, train: FeatureSet, context: Context) -> Vocabulary:
        """The IND vocabulary (a file, or built by the ``vocab`` rule with ``per_class`` tags per class, each
        chosen on held-out IND training images when ``auto``); then resolves ``no_tag="auto"``."""
        names = context.tag_names
        labels = np.asarray(train.labels)
        num_classes = int(np.max(labels)) + 1
        kept = self._train_kept(train)
        key = (str(self.vocab_path) if self.vocab_path else None, self.vocab_rule, self.per_class, self.coverage, context.seed,
               tuple(context.class_names or ()), tuple(names or ()), _kept_digest(kept, labels))
        memo = _vocab_memo(train)
        if key in memo:  # another tag-based method of this run built it: reuse it, log nothing new
            v, self.vocab_rule_used, self.per_class_used, fit = memo[key]
            v = copy.deepcopy(v)
            log.debug("IND vocabulary: the one built earlier in this run (rule '%s', %d tag(s) per class)",
                      self.vocab_rule_used, self.per_class_used)
        elif self.vocab_path:
            v = Vocabulary.load(self.vocab_path, num_classes, names)
            fit = vocabulary_fit(v, kept, labels)  # the file was not built from these images
            log.info("IND vocabulary from %s: %d tags; %.1f%% of IND training images keep one", self.vocab_path, len(v.tags),
                     100 * fit["coverage"])
            self.vocab_rule_used, self.per_class_used = "file", max(len(ts) for ts in v.class_tags)
        else:
            rule, m, fit = self._select_vocab(kept, labels, num_classes, context.seed, context.class_names)
            v = build_vocabulary(kept, labels, num_classes, m, context.class_names, names, rule=rule)
            self.vocab_rule_used, self.per_class_used = rule, m
        first = key not in memo
        if first:
            memo[key] = (copy.deepcopy(v), self.vocab_rule_used, self.per_class_used, dict(fit))
        self.heldout_no_tag_fraction = 1.0 - fit["coverage"]
        if self.hparams.get("no_tag", "auto") == "auto":  # resolved again on every fit, logged with the vocabulary
            self.no_tag = self._choose_no_tag(self.heldout_no_tag_fraction, int(fit["n"]), announce=first)
        log.debug("IND vocabulary: %s", {v._cls(c): [v._tag(t) for t in ts] for c, ts in enumerate(v.class_tags)})
        return v

    def _choose_no_tag(self, q: float, n: int, announce: bool = True) -> str:
        """``no_tag="auto"``: the paper's rule (``ood``) when we can be confident that fewer than 5% of IND
        images have no kept IND tag -- the one-sided 95% Wilson upper bound of the held-out no-tag
        fraction ``q`` (``n`` held-out IND *training* images, never test sets) is below 5% -- else
        ``fallback``.

        Why: under ``ood`` every IND image without a kept tag outscores every OOD image that has one, so
        the true-positive rate can never exceed ``1 - q`` below the no-tag score; once ``q >= 5%`` the
        FPR95 threshold is the no-tag score itself and FPR95 degenerates to 100% (and ``tagood fit``'s
        95% threshold flags nothing). Its gain -- untagged OOD images are flagged for free -- is worth
        that only when ``q`` is surely below 5%: the paper's regime (RAM, a vocabulary naming every
        ImageNet class, and a large held-out part). A point estimate is not enough on small data:
        measured on ``fashion-clutter --quick``, the paper's vocabulary left 2.8% of 72 held-out IND
        training images untagged and 5.8% of the IND test images (FPR95 100). Under ``fallback`` the same
        images are scored from all of their tokens against the same centres: a continuous score that
        still ranks them (the centres were trained with untagged training images on all tokens too)."""
        upper = _wilson_upper(q, n)
        rule = "ood" if upper < NO_TAG_DEGENERATE else "fallback"
        log.log(logging.INFO if announce else logging.DEBUG,
                "no-tag rule: %s (%.1f%% of %d held-out IND training images keep no IND tag; 95%% upper bound %.1f%%, "
                "'ood' needs < %.0f%%)", rule, 100 * q, n, 100 * upper, 100 * NO_TAG_DEGENERATE)
        return rule

    def _select_vocab(self, kept: list[np.ndarray], labels: np.ndarray, num_classes: int, seed: int,
                      class_names: Sequence[str] | None = None, max_m: int = 10, folds: int = 5) -> tuple[str, int, dict[str, float]]:
        """(rule, tags per class, held-out fit) of the vocabulary, chosen on held-out IND training images
        (never the test sets): ``folds``-fold cross-validation stratified by class -- each fold's images
        are measured against vocabularies built on the other folds, so every training image is held out
        once (a single 80/20 split held out too few images to tell 0% from 5% untagged on small data).

        * tags per class ``m`` (``per_class="auto"``): the smallest ``m`` whose vocabularies give a kept IND
          tag to >= ``coverage`` of the held-out images (the paper uses m = 1 with a strong tagger; a weak
          one needs more tags per class, else many IND images have no tag);
        * rule (``vocab="auto"``): ``frequent`` (the paper) or ``specific``, whichever has the higher
          held-out ``separation`` (coverage x the share of kept tags that name the image's own class,
          :func:`tagood.detectors.tagood.vocabulary.vocabulary_fit`); a tie keeps the paper's rule.

        Logs once which rule and how many tags won."""
        fold = _stratified_folds(labels, seed, folds)
        parts = []
        for f in range(folds):
            fit_idx, held_idx = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            if len(held_idx):
                parts.append((fit_idx, held_idx, [kept[i] for i in held_idx]))
        rules = list(VOCAB_RULES) if self.vocab_rule == "auto" else [self.vocab_rule]
        results: list[tuple[str, int, dict[str, float]]] = []
        for rule in rules:
            ranked = []
            for fit_idx, held_idx, kept_held in parts:
                try:
                    ranked.append((rank_tags([kept[i] for i in fit_idx], labels[fit_idx], num_classes, rule), held_idx, kept_held))
                except ValueError:
                    continue  # a class without tags outside this fold: the fold is not measured
            if not ranked:
                continue
            ms = [int(self.per_class)] if self.per_class != "auto" else range(1, max_m + 1)
            longest = max(len(u) for r, _, _ in ranked for u, _ in r)
            fit: dict[str, float] = {}
            m = ms[0]
            for m in ms:
                fit = _pool([vocabulary_fit(Vocabulary([[int(t) for t in u[:m]] for u, _ in r]), kh, labels[hi]) for r, hi, kh in ranked])
                if fit["coverage"] >= self.coverage or m >= longest:
                    break
            if self.per_class == "auto" and fit["coverage"] < self.coverage:
                log.warning("IND vocabulary (%s): even %d tags per class cover only %.1f%% of held-out IND training images",
                            rule, m, 100 * fit["coverage"])
            results.append((rule, m, fit))
        if not results:  # too few images to hold some out: no choice is measured
            rule = rules[0]
            m = 1 if self.per_class == "auto" else int(self.per_class)
            v = build_vocabulary(kept, labels, num_classes, m, class_names, rule=rule, quiet=True)
            fit = vocabulary_fit(v, kept, labels)
            log.warning("IND vocabulary: too few IND training images to choose on held-out ones; rule %s, %d tag(s) per class", rule, m)
            return rule, m, fit
        best = max(results, key=lambda r: (round(r[2]["separation"], 12), -rules.index(r[0])))
        others = "; ".join(f"{r}: {m} tag(s)/class, coverage {100 * f['coverage']:.1f}%, separation {f['separation']:.3f}"
                           for r, m, f in results if r != best[0])
        log.info("IND vocabulary: rule '%s' with %d tag(s) per class (%d held-out IND training images: coverage %.1f%%, "
                 "separation %.3f)%s", best[0], best[1], int(best[2]["n"]), 100 * best[2]["coverage"], best[2]["separation"],
                 f"; beat {others}" if others else "")
        return best

    def kept_tags(self, data: FeatureSet) -> np.ndarray:
        """Boolean (N,k): kept IND tags per image."""
        assert self.vocab is not None
        return self.rule.kept(data.tag_attention, data.tag_probs, allowed=self.vocab.tags)

    def decompose(self, data: FeatureSet, keep: np.ndarray | None = None) -> tuple[FeatureSet, np.ndarray]:
        """(object-token FeatureSet, has_tag) for ``data`` by the tag rule and tau."""
        keep = self.kept_tags(data) if keep is None else keep
        mask, has = token_mask(data.tag_attention.maps, keep, self.tau)
        return data.with_(tokens=select_tokens(data.tokens, mask)), has

    def max_tag_prob(self, data: FeatureSet, keep: np.ndarray) -> np.ndarray:
        p = np.take_along_axis(np.asarray(data.tag_probs), data.tag_attention.ids, axis=1)
        return np.where(keep, p, 0.0).max(axis=1)


@register("tagscore")
class TagScore(_TagBase):
    """Tag Score (TagOOD Table 3): the tagger's confidence alone. Score = -max over IND-vocabulary
    tags of the tag probability (higher = more OOD). It scores no tokens, so ``no_tag`` and ``tau`` do not
    change its score; :meth:`token_masks` still gives the decomposition its vocabulary and ``tau`` imply."""

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.rule = self._rule_for(context)
        self.vocab = self._build_vocab(train, context)

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert self.vocab is not None
        return -np.asarray(data.tag_probs, dtype=np.float64)[:, self.vocab.tags].max(axis=1)


@register("tagood")
class TagOOD(_TagBase):
    """TagOOD: object tokens (tags + attention) -> projector -> distance to the nearest class centre.

    Defaults: tau = 0.5 (paper), score = cosine (paper), multiple predicted tags for training
    decomposition (paper Table 5), CE + MSE to EMA centres. ``preset``: ``small`` (default here,
    CPU-sized) or ``paper`` (the published setting; where the paper is silent the public code's:
    AdamW weight decay 5e-4, cosine to lr 1e-5, MSE weight 0.4 in mean-MSE units = the paper's 0.1 on
    the code's MSE summed over 4 chunks, all image tokens at test time, uniform tag threshold 0.5; see
    :data:`tagood.detectors.tagood.train.PRESETS` for each choice and how ``small`` differs). Any TrainConfig
    field (``epochs``, ``dim``, ``lr``, ``momentum``, ``mse_weight``, ``min_lr``, ...) and
    ``test_tokens`` / ``tag_threshold`` override the preset. ``score=chunk`` is the public code's
    score; its strength comes almost entirely from its max-tag-probability factor (on our tokens, on
    ``fashion``: that factor alone 82.05 vs 82.18 average AUROC for the full score, DESIGN.md
    section 6). Images with no kept IND tag: ``no_tag`` (``_TagBase``), the same rule on every
    split. Higher = more OOD.
    """

    #: ablation switches of the subclasses
    use_projector = True
    centres_from = "ema"  # or "mean": class means of training features

    def __init__(self, tau: float = 0.5, score: str = "cosine", test_tokens: str | None = None, tags: str = "pred",
                 preset: str = "small", tag_threshold: float | None = None, tag_top_k: int = 10, per_class: int | str = "auto",
                 coverage: float = 0.97, vocabulary: str | None = None, no_tag: str = "auto", vocab: str = "auto",
                 **train_kw: Any) -> None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}")
        test_tokens = DETECTOR_PRESETS[preset]["test_tokens"] if test_tokens is None else test_tokens
        if tag_threshold is None:
            tag_threshold = DETECTOR_PRESETS[preset]["tag_threshold"]
        super().__init__(tau=tau, tag_threshold=tag_threshold, tag_top_k=tag_top_k, per_class=per_class, coverage=coverage,
                         vocabulary=vocabulary, no_tag=no_tag, vocab=vocab, score=score, test_tokens=test_tokens, tags=tags, preset=preset,
                         **train_kw)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}")
        if test_tokens not in ("object", "all"):
            raise ValueError("test_tokens must be 'object' or 'all'")
        if tags not in ("pred", "gt"):
            raise ValueError("tags must be 'pred' (multiple predicted tags) or 'gt' (the ground-truth class tag)")
        unknown = set(train_kw) - set(TrainConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown TagOOD options {sorted(unknown)}")
        self.score_kind, self.test_tokens, self.tags = score, test_tokens, tags
        self.train_cfg = PRESETS[preset].with_(**train_kw)
        self.model: Projector | None = None
        self.centres: np.ndarray | None = None
        self.history: list[dict[str, float]] = []
        self.device = "cpu"

    # -- training ------------------------------------------------------------------------------
    def _train_keep(self, train: FeatureSet, attend: Callable[..., np.ndarray] | None) -> tuple[FeatureSet, np.ndarray]:
        """Training decomposition: predicted IND tags (``pred``) or the class's vocabulary tag (``gt``)."""
        assert self.vocab is not None
        attn = train.tag_attention
        if self.tags == "pred":
            keep = self.kept_tags(train)
            return train, keep
        gt = np.array([self.vocab.class_tags[int(y)][0] for y in train.labels])
        if attend is not None:  # the tagger recomputes the GT tag's attention from the cached tokens
            maps = attend(train.tokens.pad()[0], gt[:, None])
            return train.with_(tag_attention=TagAttention(gt[:, None], maps)), np.ones((len(gt), 1), bool)
        slot = attn.ids == gt[:, None]
        missing = ~slot.any(axis=1)
        if missing.any():
            log.warning("tags=gt: the ground-truth tag is not among the stored tags of %d images and the tagger cannot "
                        "recompute attention; those images use their predicted IND tags", int(missing.sum()))
        keep = slot | (missing[:, None] & self.kept_tags(train))
        return train, keep

    def _decompose_train(self, train: FeatureSet, context: Context, directory: str | None) -> tuple[TokenSet, np.ndarray, int]:
        """(object tokens, has_tag, number of token positions) of the training split, chunk by chunk.

        A streamed split writes its object tokens to ``directory`` (memory-mapped for training)."""
        from tagood.runtime.progress import progress_bar

        sink = TokenSetSink(directory if train.is_streamed() else None, name="train-object-tokens")
        has_parts: list[np.ndarray] = []
        n_pos = 0
        with progress_bar(f"{self.name}: decompose IND train", total=len(train), unit="img") as advance:
            for chunk in train.iter_chunks():
                source, keep = self._train_keep(chunk, context.attend)
                mask, has = token_mask(source.tag_attention.maps, keep, self.tau)
                sink.append(select_tokens(chunk.tokens, mask))
                has_parts.append(has)
                n_pos = max(n_pos, int(chunk.tokens.positions.max()) + 1)
                advance(len(has))
        return sink.finish(), np.concatenate(has_parts), n_pos

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.rule = self._rule_for(context)
        self.device = context.device
        self.vocab = self._build_vocab(train, context)
        work = context.work_dir
        if work is not None:
            Path(work).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tagood-train-", dir=work) as tmp:
            obj_tokens, has, n_pos = self._decompose_train(train, context, tmp)
            log.info("TagOOD training decomposition: %.1f tokens/image kept (tau=%s), %d of %d images without a kept IND tag use all tokens",
                     float(obj_tokens.lengths.mean()), self.tau, int((~has).sum()), len(has))
            labels = np.asarray(train.labels)
            num_classes = int(labels.max()) + 1
            if self.use_projector:
                cfg = self.train_cfg.with_(seed=context.seed)
                self.model, centres, self.history = train_projector(obj_tokens, labels, num_classes, n_pos, cfg, self.device)
                if self.centres_from == "ema":
                    self.centres = centres.cpu().numpy().astype(np.float32)
                else:
                    feats, _ = embed(self.model, obj_tokens, device=self.device)
                    self.centres = _class_means(feats, labels, num_classes)
            else:
                self.centres = _class_means(mean_tokens(obj_tokens), labels, num_classes)
            del obj_tokens  # release the memory-maps before the directory goes

    # -- scoring -------------------------------------------------------------------------------
    def _masks(self, data: FeatureSet, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.test_tokens == "all":
            return np.ones((len(keep), np.asarray(data.tag_attention.maps).shape[-1]), bool), keep.any(axis=1)
        return token_mask(data.tag_attention.maps, keep, self.tau)

    def features(self, data: FeatureSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(test features, has_tag, tag probability factor) for one in-memory chunk ``data``.

        The tokens are those of :meth:`token_masks`. The tag factor (used by ``score=chunk`` only) is the
        max kept IND-tag probability; for an image without a kept IND tag (scored under
        ``no_tag="fallback"``) it is its max IND-vocabulary tag probability, thresholds ignored."""
        assert self.vocab is not None
        keep = self.kept_tags(data)
        mask, has = self._masks(data, keep)
        tokens = data.tokens if self.test_tokens == "all" else select_tokens(data.tokens, mask)
        if self.model is not None:
            feats, _ = embed(self.model, tokens, device=self.device)
        else:
            feats = mean_tokens(tokens)
        p = self.max_tag_prob(data, keep)
        if not has.all():
            p[~has] = np.asarray(data.tag_probs, dtype=np.float64)[~has][:, self.vocab.tags].max(axis=1)
        return feats, has, p

    def _score(self, data: FeatureSet) -> np.ndarray:
        """Higher = more OOD. Images without a kept IND tag: ``NO_TAG_SCORE`` under ``no_tag="ood"``,
        their all-token score under ``no_tag="fallback"`` -- on every split alike."""
        assert self.centres is not None
        feats, has, p = self.features(data)
        s = centre_score(feats, self.centres, self.score_kind, tag_prob=p)
        if self.no_tag == "ood":
            s[~has] = NO_TAG_SCORE
        return s

    # -- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``weights.safetensors`` (projector, centres) and ``config.json`` (options, vocabulary); no pickle."""
        if not self.fitted or self.centres is None or self.vocab is None:
            raise RuntimeError("fit the detector before saving it")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {"centres": self.centres.astype(np.float32)}
        if self.model is not None:
            tensors.update({f"projector.{k}": v.detach().cpu().numpy() for k, v in self.model.state_dict().items()})
        save_file(tensors, str(d / "weights.safetensors"))
        cfg = {
            "format": "tagood-detector/1", "name": self.name, "class": type(self).__name__,
            "hparams": {k: v for k, v in self.hparams.items()}, "train": config_dict(self.train_cfg),
            "rule": {"threshold": np.asarray(self.rule.threshold).tolist(), "top_k": self.rule.top_k},
            "no_tag": self.no_tag, "heldout_no_tag_fraction": self.heldout_no_tag_fraction,
            "projector": self.model.config if self.model is not None else None,
            "vocabulary": {"class_tags": self.vocab.class_tags, "freq": self.vocab.freq,
                           "class_names": self.vocab.class_names, "tag_names": [self.vocab._tag(t) for t in self.vocab.tags],
                           "rule": self.vocab_rule_used, "per_class": self.per_class_used},
        }
        (d / "config.json").write_text(json.dumps(cfg, indent=1))
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> "TagOOD":
        """Load a detector written by :meth:`save`; it scores exactly as before."""
        d = Path(directory)
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"{d} holds no saved TagOOD detector (config.json missing)")
        cfg = json.loads((d / "config.json").read_text())
        klass = {c.__name__: c for c in (TagOOD, CS, CECS)}[cfg["class"]]
        det = klass(**cfg["hparams"])
        thr = cfg["rule"]["threshold"]
        det.rule = TagRule(thr if np.isscalar(thr) else np.asarray(thr), cfg["rule"]["top_k"])
        v = cfg["vocabulary"]
        det.vocab = Vocabulary(v["class_tags"], v["freq"], v["class_names"])
        det.vocab_rule_used, det.per_class_used = v.get("rule"), v.get("per_class")
        det.no_tag = cfg.get("no_tag", "ood")  # detectors saved before the option existed used the paper's rule
        det.heldout_no_tag_fraction = cfg.get("heldout_no_tag_fraction")
        w = load_file(str(d / "weights.safetensors"))
        det.centres = w["centres"]
        if cfg["projector"] is not None:
            det.model = Projector(**cfg["projector"])
            det.model.load_state_dict({k[len("projector."):]: torch.as_tensor(t) for k, t in w.items() if k.startswith("projector.")})
            det.model = det.model.to(device).eval()
        det.device = device
        det.fitted = True
        return det


#: IND no-tag fraction from which FPR95 degenerates under ``no_tag="ood"`` (95% of IND must be accepted)
NO_TAG_DEGENERATE = 0.05


def _wilson_upper(q: float, n: int, z: float = 1.6449) -> float:
    """One-sided upper confidence bound (Wilson score; z = 1.6449 for 95%) of a fraction ``q`` measured on
    ``n`` items; 1.0 when ``n`` is 0."""
    if n <= 0:
        return 1.0
    z2 = z * z
    centre = q + z2 / (2 * n)
    half = z * np.sqrt(q * (1 - q) / n + z2 / (4 * n * n))
    return float(min(1.0, (centre + half) / (1 + z2 / n)))


def _stratified_folds(labels: np.ndarray, seed: int, folds: int = 5) -> np.ndarray:
    """Fold id (0..folds-1) of each image, seeded and stratified by class (a class's images are dealt
    round-robin over the folds in a random order); -1 (never held out) for a class with one image, so
    every class keeps images to build a vocabulary from."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    fold = np.full(len(labels), -1, dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) > 1:
            fold[rng.permutation(idx)] = (np.arange(len(idx)) + rng.integers(folds)) % folds
    return fold


def _pool(fits: Sequence[dict[str, float]]) -> dict[str, float]:
    """One held-out fit from the folds' fits: coverage pooled over images, precision over covered images."""
    n = sum(f["n"] for f in fits)
    covered = sum(f["coverage"] * f["n"] for f in fits)
    coverage = covered / n if n else float("nan")
    precision = sum(f["precision"] * f["coverage"] * f["n"] for f in fits) / covered if covered else 0.0
    return {"coverage": coverage, "precision": precision, "separation": coverage * precision, "n": n}


def _class_means(feats: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.stack([np.asarray(feats)[labels == c].mean(axis=0) for c in range(num_classes)]).astype(np.float32)


@register("cs")
class CS(TagOOD):
    """CS (TagOOD Table 3): class centres = class means of the decomposed features (mean of the
    object tokens), no projector; cosine score. Higher = more OOD."""

    use_projector = False


@register("ce+cs")
class CECS(TagOOD):
    """(CE)+CS (TagOOD Table 3): projector trained with cross-entropy only; centres = class means of
    its training features; cosine score. Higher = more OOD."""

    centres_from = "mean"

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("mse_weight", 0.0)
        super().__init__(**kw)
