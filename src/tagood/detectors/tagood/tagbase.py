"""What the tag-based detectors (TagScore, CS, (CE)+CS, TagOOD) share: their options for the tag rule, the IND
vocabulary, the decomposition and the no-tag rule; building the vocabulary at fit; the decomposition contract the
diagnostics read (``token_masks``, ``kept_tag_ids``); and the state they save.

TagOOD: Li et al., "TagOOD: A Novel Approach to Out-of-Distribution Detection via Vision-Language Representations
and Class Center Learning", ACM MM 2024. Scores of every detector here: higher = more OOD.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import numpy as np
from pydantic import Field

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.validation import Float, Fraction, OpenFraction, PathLike, PosInt
from tagood.detectors.base import Detector, NotFittedError
from tagood.detectors.base import load as load_detector
from tagood.detectors.options import DetectorOptions, OptionError
from tagood.detectors.tagood.decompose import ORACLE_FIELD, TagRule, oracle_mask, select_tokens, token_mask, top_tag
from tagood.detectors.tagood.inputs import labels_of, tag_attention_of, tag_probs_of, tokens_of
from tagood.detectors.tagood.kept import KeptTags
from tagood.detectors.tagood.memo import BuiltVocabulary, VocabularyMemo, kept_digest
from tagood.detectors.tagood.selection import choose_no_tag, select_vocabulary
from tagood.detectors.tagood.vocabulary import (
    Vocabulary,
    VocabularyError,
    build_vocabulary,
    file_classes,
    vocabulary_fit,
)
from tagood.errors import CheckpointError, InputError

__all__ = ["NO_TAG_RULES", "PAPER", "TagDetector"]

log = logging.getLogger(__name__)

PAPER = ("Li et al., TagOOD: A Novel Approach to Out-of-Distribution Detection via Vision-Language Representations "
         "and Class Center Learning, ACM MM 2024")

NO_TAG_RULES = ("auto", "ood", "fallback")


class TagDetector(Detector):
    """Base of the tag-based detectors: tag rule, IND vocabulary, decomposition, no-tag rule. Higher = more OOD.

    The options (``Options``): ``tau`` is the decomposition threshold
    (:func:`tagood.detectors.tagood.decompose.token_mask`: keep the tokens whose combined min-max-normalised
    attention is ``> tau``; ``tau <= 0`` keeps every token). ``tag_threshold`` ``None`` uses the tagger's per-tag
    thresholds when the context has them (RAM's file), else 0.0; a number is one uniform threshold for all tags
    (``0.0`` really means 0.0, even with RAM). ``vocab`` is the IND vocabulary rule and ``per_class`` the tags per
    class, each chosen on held-out IND training images when ``auto``
    (:func:`tagood.detectors.tagood.selection.select_vocabulary`); ``vocabulary``, a file, overrides both.
    ``no_tag`` is what an image with no kept IND tag gets, on IND test and OOD data alike: ``ood``, the most-OOD
    score ``NO_TAG_SCORE`` (the paper, section 3.5); ``fallback``, it is scored with all of its tokens; ``auto``,
    ``ood`` when held-out IND training images show that surely fewer than 5% of IND images lack a tag, else
    ``fallback`` (:func:`tagood.detectors.tagood.selection.choose_no_tag`).

    Saved state (``det.save``): the tag rule (its per-tag thresholds included, so a loaded detector needs no
    ``Context.tag_thresholds`` again), the vocabulary and how it was chosen, the resolved no-tag rule.
    """

    class Options(DetectorOptions):
        tau: Float = Field(0.5, lt=1, description="decomposition threshold on the min-max-normalised tag attention "
                                                  "(paper: 0.5; <= 0 keeps every token)")
        tag_threshold: Fraction | None = Field(None, description="tag probability a tag must exceed to be kept; none: "
                                                                 "the tagger's per-tag thresholds if it has them, else 0")
        tag_top_k: PosInt = Field(10, description="only the tagger's top-k tags of an image can be kept")
        per_class: Literal["auto"] | PosInt = Field("auto", description="IND vocabulary tags per class; auto: the fewest "
                                                                       "that cover `coverage` of held-out IND images")
        coverage: OpenFraction = Field(0.97, description="held-out IND coverage that per_class=auto aims at")
        vocabulary: PathLike | None = Field(None, description="an IND vocabulary file (TSV, as a run writes it) "
                                                              "instead of building one")
        no_tag: Literal["auto", "ood", "fallback"] = Field(
            "auto", description="an image without a kept IND tag: ood (most-OOD score, the paper), fallback (scored "
                                "with all its tokens) or auto (chosen on held-out IND images)")
        vocab: Literal["auto", "frequent", "specific"] = Field(
            "auto", description="IND vocabulary rule: frequent (the paper), specific (frequent in the class, rare in "
                                "the others) or auto (chosen on held-out IND images)")
        decompose: Literal["tags", "oracle"] = Field(
            "tags", description="object tokens from the tags' attention (tags, the paper) or, a diagnostic that reads "
                                "ground truth, from the source's true object mask (oracle; needs a source with masks)")
        tag_maps: Literal["all", "top"] = Field(
            "all", description="whose attention makes the object tokens: all kept IND tags (their maximum, the paper) "
                               "or the single most likely kept IND tag (top)")

    options: Options
    paper: ClassVar[str] = PAPER
    requires = frozenset({"tokens", "tag_probs", "tag_attention"})
    fit_requires = frozenset({"tokens", "tag_probs", "tag_attention", "labels"})
    streaming_fit = True  # the vocabulary and the decomposition run chunk by chunk

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        #: the tag rule; at fit the tagger's per-tag thresholds replace the uniform 0.0 when ``tag_threshold`` is None
        self.rule = TagRule(0.0 if o.tag_threshold is None else float(o.tag_threshold), int(o.tag_top_k))
        #: the rule and tags per class the vocabulary was built with (set at fit)
        self.vocab_rule_used: str | None = None
        self.per_class_used: int | None = None
        self.vocab: Vocabulary | None = None
        #: the no-tag rule in force: ``auto`` is resolved to ``ood`` / ``fallback`` at fit
        self.no_tag: str = o.no_tag
        #: fraction of held-out IND training images without a kept IND tag (set at fit; None if not measured)
        self.heldout_no_tag_fraction: float | None = None
        if self.oracle:  # the oracle tokens are one more input, on every split
            self.requires = type(self).requires | {ORACLE_FIELD}  # type: ignore[misc]
            self.fit_requires = (type(self).fit_requires or type(self).requires) | {ORACLE_FIELD}  # type: ignore[misc]

    @property
    def oracle(self) -> bool:
        """Option ``decompose="oracle"``: the object tokens come from ground truth (a diagnostic, never a default)."""
        return self.options.decompose == "oracle"

    # -- options as attributes (read-only views of ``self.options``) -------------------------------------
    @property
    def tau(self) -> float:
        """The decomposition threshold (option ``tau``)."""
        return float(self.options.tau)

    @property
    def tag_threshold(self) -> float | None:
        """The uniform tag threshold (option ``tag_threshold``; ``None``: the tagger's own)."""
        t = self.options.tag_threshold
        return None if t is None else float(t)

    def check_data(self, n_train: int, n_classes: int | None = None) -> None:
        """Raise :class:`tagood.detectors.options.OptionError` when option ``vocabulary`` names a file that is
        missing, unreadable or gives no tag to some of the ``n_classes`` IND classes.

        Args:
            n_train: the number of IND training images.
            n_classes: the number of IND classes, if known.
        """
        path = self.options.vocabulary
        if path is None:
            return
        try:
            classes = file_classes(path)
        except VocabularyError as e:
            raise OptionError(f"detector '{self.name}': option vocabulary: {e}") from None
        missing = [] if n_classes is None else [c for c in range(n_classes) if c not in classes]
        if missing:
            raise OptionError(f"detector '{self.name}': option vocabulary: {path} gives no tag to IND classes {missing} "
                              f"of the {n_classes}; give a vocabulary file written for these classes, or omit the option")

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
        return self._object_tokens(data, keep)

    def _object_tokens(self, data: FeatureSet, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask (N,T), has_tag (N,)): :func:`token_mask` of the tags' attention (``decompose="tags"``), or the
        source's oracle tokens (``decompose="oracle"``, :func:`oracle_mask`)."""
        attn = tag_attention_of(data, self.name)
        maps = attn.maps
        if not self.oracle:
            if self.options.tag_maps == "top":
                keep = top_tag(keep, attn, tag_probs_of(data, self.name))
            return token_mask(maps, keep, self.tau)
        if ORACLE_FIELD not in data.extra:
            raise InputError(f"{self.name}: option decompose=oracle needs the feature set '{data.name}' to hold "
                             f"extra['{ORACLE_FIELD}'] (the true object tokens); the benchmark runner adds them for "
                             f"sources with object masks (e.g. the scenes benchmark); use decompose=tags otherwise")
        return oracle_mask(np.asarray(data.extra[ORACLE_FIELD]), int(np.asarray(maps).shape[-1]))

    def token_masks(self, data: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
        """After fit: the decomposition of each image exactly as :meth:`score` uses it.

        Token index ``t`` is the ``t``-th token of the cached token set (EfficientNet: the row-major 7x7 grid, no
        prefix token; RAM: 1 pooled token then the 12x12 patches). Rows of images with ``has_tag`` False are all
        True: the tokens the all-tokens fallback uses; under ``no_tag="ood"`` such an image is not scored from
        tokens at all (it gets ``NO_TAG_SCORE``), which ``has_tag`` tells.

        Args:
            data: the split; a streamed one is processed chunk by chunk (``data.iter_chunks()``).
        Returns:
            ``(mask, has_tag)``: ``mask`` (N,T) bool, the tokens used to score each image (tag rule, vocabulary,
            ``tau``, ``test_tokens``); ``has_tag`` (N,) bool, the image kept at least one IND-vocabulary tag.
        """
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
        """After fit: the kept IND tag ids of each image (tag rule + vocabulary).

        Args:
            data: the split; a streamed one is processed chunk by chunk.
        Returns:
            One int64 array per image (empty when the image kept none).
        """
        self._check_fitted()
        out: list[np.ndarray] = []
        for chunk in data.iter_chunks():
            keep = self.kept_tags(chunk)
            ids = np.asarray(tag_attention_of(chunk, self.name).ids)
            out.extend(ids[i][keep[i]].astype(np.int64) for i in range(len(ids)))
        return out

    def _check_fitted(self) -> None:
        if self.vocab is None:
            raise NotFittedError(f"{self.name}: call det.fit(train) before asking for token masks or kept tags")

    def kept_tags(self, data: FeatureSet) -> np.ndarray:
        """Boolean (N,k): kept IND tags per image of one in-memory chunk (tag rule and vocabulary)."""
        assert self.vocab is not None
        return self.rule.kept(tag_attention_of(data, self.name), tag_probs_of(data, self.name), allowed=self.vocab.tags)

    def decompose(self, data: FeatureSet, keep: np.ndarray | None = None) -> tuple[FeatureSet, np.ndarray]:
        """The object tokens of one in-memory chunk.

        Args:
            data: the chunk.
            keep: its kept tag slots (N,k) (default: :meth:`kept_tags`).
        Returns:
            ``(data with its object tokens only, has_tag (N,))``, by the tag rule and ``tau``.
        """
        keep = self.kept_tags(data) if keep is None else keep
        mask, has = self._object_tokens(data, keep)
        return data.with_(tokens=select_tokens(tokens_of(data, self.name), mask)), has

    def max_tag_prob(self, data: FeatureSet, keep: np.ndarray) -> np.ndarray:
        """The highest probability among each image's kept tags (0 when it kept none), float64 (N,)."""
        p = np.take_along_axis(np.asarray(tag_probs_of(data, self.name)), tag_attention_of(data, self.name).ids, axis=1)
        return np.where(keep, p, 0.0).max(axis=1)

    # -- the vocabulary ----------------------------------------------------------------------------
    def _train_kept(self, train: FeatureSet) -> KeptTags:
        """Tag ids kept by the tag rule on each training image (before any vocabulary), chunk by chunk, held flat
        (no object per image)."""
        def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for chunk in train.iter_chunks():
                attn = tag_attention_of(chunk, self.name)
                yield np.asarray(attn.ids), np.asarray(self.rule.kept(attn, tag_probs_of(chunk, self.name)))

        return KeptTags.from_chunks(chunks())

    def _build_vocab(self, train: FeatureSet, context: Context) -> Vocabulary:
        """The IND vocabulary (a file, or built by the ``vocab`` rule with ``per_class`` tags per class, each
        chosen on held-out IND training images when ``auto``); then resolves ``no_tag="auto"``. A vocabulary
        another detector built from the same split with the same inputs and context is reused
        (:class:`tagood.detectors.tagood.memo.VocabularyMemo`)."""
        o = self.options
        names = context.tag_names
        labels = np.asarray(labels_of(train, self.name))
        num_classes = int(np.max(labels)) + 1
        kept = self._train_kept(train)
        key = (str(o.vocabulary) if o.vocabulary else None, o.vocab, o.per_class, o.coverage, context.seed,
               tuple(context.class_names or ()), tuple(names or ()), kept_digest(kept, labels))
        memo = VocabularyMemo.of(context)
        built = memo.get(train, key)
        first = built is None
        if built is not None:  # another tag-based method of this run built it: reuse it, log nothing new
            log.debug("IND vocabulary: the one built earlier in this run (rule '%s', %d tag(s) per class)",
                      built.rule, built.per_class)
        elif o.vocabulary:
            v = Vocabulary.load(o.vocabulary, num_classes, names)
            fit = vocabulary_fit(v, kept, labels)  # the file was not built from these images
            log.info("IND vocabulary from %s: %d tags; %.1f%% of IND training images keep one", o.vocabulary, len(v.tags),
                     100 * fit["coverage"])
            built = BuiltVocabulary(v, "file", max(len(ts) for ts in v.class_tags), fit)
        else:
            rule, m, fit = select_vocabulary(kept, labels, num_classes, context.seed, o.vocab, o.per_class, o.coverage,
                                             context.class_names)
            v = build_vocabulary(kept, labels, num_classes, m, context.class_names, names, rule=rule)
            built = BuiltVocabulary(v, rule, m, fit)
        if first:
            memo.put(train, key, built)
        v, self.vocab_rule_used, self.per_class_used = built.vocab, built.rule, built.per_class
        self.heldout_no_tag_fraction = 1.0 - built.fit["coverage"]
        if o.no_tag == "auto":  # resolved again on every fit, logged with the vocabulary
            self.no_tag = choose_no_tag(self.heldout_no_tag_fraction, int(built.fit["n"]), announce=first)
        log.debug("IND vocabulary: %s", {v._cls(c): [v._tag(t) for t in ts] for c, ts in enumerate(v.class_tags)})
        return v

    # -- saving ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> TagDetector:
        """The former loader of the tag-based detectors, kept for its callers: ``tagood.detectors.load(directory,
        tagood.Context(device=device))``, which new code calls instead.

        Args:
            directory: a folder written by ``det.save``.
            device: the torch device a projector runs on.
        Returns:
            The saved detector (TagOOD, CS, (CE)+CS or TagScore), fitted.
        Raises:
            tagood.errors.CheckpointError: the folder holds no saved detector, or one that is not tag-based.
        """
        det = load_detector(directory, Context(device=device))
        if not isinstance(det, TagDetector):
            raise CheckpointError(f"{directory} holds a saved '{det.name}' detector, not a tag-based one; load it with "
                                  f"tagood.detectors.load(directory)")
        return det

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays: the per-tag thresholds of the tag rule, if it has them. Metadata: the uniform threshold and
        top-k, the vocabulary (class tags, counts, class names, the names of its tags) and how it was chosen, the
        resolved no-tag rule and the held-out no-tag fraction."""
        assert self.vocab is not None
        v = self.vocab
        arrays: dict[str, np.ndarray] = {}
        thr = self.rule.threshold
        if np.isscalar(thr):
            rule: dict[str, Any] = {"threshold": float(cast(float, thr)), "top_k": self.rule.top_k}
        else:  # the tagger's per-tag thresholds, in their dtype
            arrays["rule.thresholds"] = np.asarray(thr)
            rule = {"threshold": None, "top_k": self.rule.top_k}
        meta = {"rule": rule, "no_tag": self.no_tag, "heldout_no_tag_fraction": self.heldout_no_tag_fraction,
                "vocabulary": {"class_tags": v.class_tags, "freq": v.freq, "class_names": v.class_names,
                               "tag_names": {str(t): v._tag(int(t)) for t in v.tags} if v.tag_names else None,
                               "rule": self.vocab_rule_used, "per_class": self.per_class_used}}
        return arrays, meta

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        rule = meta["rule"]
        thr = arrays["rule.thresholds"] if rule["threshold"] is None else float(rule["threshold"])
        self.rule = TagRule(thr, int(rule["top_k"]))
        v = meta["vocabulary"]
        names = None
        if v.get("tag_names"):
            named = {int(t): str(n) for t, n in v["tag_names"].items()}
            names = [named.get(t, str(t)) for t in range(max(named) + 1)]
        self.vocab = Vocabulary([[int(t) for t in ts] for ts in v["class_tags"]], [[int(n) for n in f] for f in v["freq"]],
                                v["class_names"], names)
        self.vocab_rule_used, self.per_class_used = v["rule"], v["per_class"]
        self.no_tag = str(meta["no_tag"])
        f = meta["heldout_no_tag_fraction"]
        self.heldout_no_tag_fraction = None if f is None else float(f)
