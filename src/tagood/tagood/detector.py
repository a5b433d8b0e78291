"""TagOOD as detectors: the full method and the ablations of the paper's Tables 3-5 and Figs. 3/5.

TagOOD (Li et al., "TagOOD: A Novel Approach to Out-of-Distribution Detection via Vision-Language
Representations and Class Center Learning", ACM MM 2024). Scores: higher = more OOD.

Registry names: ``tagood`` (full method), ``cs`` (class means of decomposed features, no
projector), ``ce+cs`` (projector trained with CE only, class means of its features as centres),
``tagscore`` (the tagger's confidence alone). Options as variants, e.g. ``tagood[tau=0.25]``,
``tagood[score=euclid]``, ``tagood[test_tokens=all]``, ``tagood[tags=gt]``, ``tagood[mse_weight=0]``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from tagood.detectors.base import Detector, register
from tagood.ragged import TokenSetSink
from tagood.tagood.decompose import TagRule, mean_tokens, select_tokens, token_mask
from tagood.tagood.projector import Projector
from tagood.tagood.scores import NO_TAG_SCORE, SCORES, centre_score
from tagood.tagood.train import PRESETS, TrainConfig, config_dict, embed, train_projector
from tagood.tagood.vocabulary import Vocabulary, build_vocabulary
from tagood.types import Context, FeatureSet, TagAttention, TokenSet

log = logging.getLogger(__name__)


class _TagBase(Detector):
    """Shared plumbing: tag rule, IND vocabulary, decomposition."""

    requires = frozenset({"tokens", "tag_probs", "tag_attention"})
    fit_requires = frozenset({"tokens", "tag_probs", "tag_attention", "labels"})
    streaming_fit = True  # the vocabulary and the decomposition run chunk by chunk

    def __init__(self, tau: float = 0.5, tag_threshold: float = 0.0, tag_top_k: int = 10, per_class: int | str = "auto",
                 coverage: float = 0.97, vocabulary: str | None = None, **kw: Any) -> None:
        super().__init__(tau=tau, tag_threshold=tag_threshold, tag_top_k=tag_top_k, per_class=per_class, coverage=coverage,
                         vocabulary=vocabulary, **kw)
        self.tau = float(tau)
        self.rule = TagRule(float(tag_threshold), int(tag_top_k))
        if per_class != "auto" and int(per_class) < 1:
            raise ValueError("per_class must be 'auto' or >= 1")
        self.per_class = per_class if per_class == "auto" else int(per_class)
        self.coverage = float(coverage)
        self.vocab_path = vocabulary
        self.vocab: Vocabulary | None = None

    def _rule_for(self, context: Context) -> TagRule:
        thr = context.extra.get("tag_thresholds")
        return TagRule(np.asarray(thr), self.rule.top_k) if thr is not None and self.hparams.get("tag_threshold", 0.0) == 0.0 else self.rule

    def _build_vocab(self, train: FeatureSet, context: Context) -> Vocabulary:
        names = context.extra.get("tag_names")
        num_classes = int(np.max(train.labels)) + 1
        if self.vocab_path:
            v = Vocabulary.load(self.vocab_path, num_classes, names)
        else:
            kept: list[np.ndarray] = []
            for chunk in train.iter_chunks():
                attn = chunk.tag_attention
                keep = self.rule.kept(attn, chunk.tag_probs)
                kept.extend(attn.ids[i][keep[i]] for i in range(len(attn)))
            m = self.per_class if self.per_class != "auto" else self._auto_per_class(kept, train.labels, num_classes, context.seed)
            v = build_vocabulary(kept, train.labels, num_classes, m, context.class_names, names)
        log.info("IND vocabulary: %s", {v._cls(c): [v._tag(t) for t in ts] for c, ts in enumerate(v.class_tags)})
        return v

    def _auto_per_class(self, kept: list[np.ndarray], labels: np.ndarray, num_classes: int, seed: int, max_m: int = 10) -> int:
        """Smallest tags-per-class m whose vocabulary, built on 80% of IND train, gives a kept IND tag to
        >= ``coverage`` of the held-out 20% (never the test sets). The paper uses m = 1 with a strong
        tagger (RAM on ImageNet); a weak tagger needs more tags per class, else the no-tag rule rejects
        many IND images."""
        labels = np.asarray(labels)
        rng = np.random.default_rng(seed)
        held = np.zeros(len(labels), bool)
        held[rng.choice(len(labels), size=max(1, len(labels) // 5), replace=False)] = True
        fit_idx = np.flatnonzero(~held)
        cov = 0.0
        for m in range(1, max_m + 1):
            try:
                v = build_vocabulary([kept[i] for i in fit_idx], labels[fit_idx], num_classes, m, quiet=True)
            except ValueError:
                return m
            cov = float(np.mean([np.isin(kept[i], v.tags).any() for i in np.flatnonzero(held)]))
            if cov >= self.coverage:
                log.info("IND vocabulary: %d tag(s) per class cover %.1f%% of held-out IND training images", m, 100 * cov)
                return m
        log.warning("IND vocabulary: even %d tags per class cover only %.1f%% of held-out IND training images", max_m, 100 * cov)
        return max_m

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
    tags of the tag probability (higher = more OOD)."""

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
    decomposition (paper Table 5), CE + 0.1 MSE to EMA centres. ``preset``: ``small`` (default here,
    CPU-sized) or ``paper``; any TrainConfig field (``epochs``, ``dim``, ``lr``, ``momentum``,
    ``mse_weight``, ...) can be overridden. Images with no kept IND tag score ``NO_TAG_SCORE``
    (most OOD) on every test set. Higher = more OOD.
    """

    #: ablation switches of the subclasses
    use_projector = True
    centres_from = "ema"  # or "mean": class means of training features

    def __init__(self, tau: float = 0.5, score: str = "cosine", test_tokens: str = "object", tags: str = "pred",
                 preset: str = "small", tag_threshold: float = 0.0, tag_top_k: int = 10, per_class: int | str = "auto",
                 coverage: float = 0.97, vocabulary: str | None = None, **train_kw: Any) -> None:
        super().__init__(tau=tau, tag_threshold=tag_threshold, tag_top_k=tag_top_k, per_class=per_class, coverage=coverage,
                         vocabulary=vocabulary, score=score, test_tokens=test_tokens, tags=tags, preset=preset, **train_kw)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}")
        if test_tokens not in ("object", "all"):
            raise ValueError("test_tokens must be 'object' or 'all'")
        if tags not in ("pred", "gt"):
            raise ValueError("tags must be 'pred' (multiple predicted tags) or 'gt' (the ground-truth class tag)")
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}")
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
        sink = TokenSetSink(directory if train.is_streamed() else None, name="train-object-tokens")
        has_parts: list[np.ndarray] = []
        n_pos = 0
        for chunk in train.iter_chunks():
            source, keep = self._train_keep(chunk, context.extra.get("attend"))
            mask, has = token_mask(source.tag_attention.maps, keep, self.tau)
            sink.append(select_tokens(chunk.tokens, mask))
            has_parts.append(has)
            n_pos = max(n_pos, int(chunk.tokens.positions.max()) + 1)
        return sink.finish(), np.concatenate(has_parts), n_pos

    def _fit(self, train: FeatureSet, context: Context) -> None:
        self.rule = self._rule_for(context)
        self.device = context.device
        self.vocab = self._build_vocab(train, context)
        work = context.extra.get("work_dir")
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
    def features(self, data: FeatureSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(test features, has_tag, max kept-tag prob) for ``data``."""
        keep = self.kept_tags(data)
        if self.test_tokens == "all":
            tokens, has = data.tokens, keep.any(axis=1)
        else:
            obj, has = self.decompose(data, keep)
            tokens = obj.tokens
        if self.model is not None:
            feats, _ = embed(self.model, tokens, device=self.device)
        else:
            feats = mean_tokens(tokens)
        return feats, has, self.max_tag_prob(data, keep)

    def _score(self, data: FeatureSet) -> np.ndarray:
        assert self.centres is not None
        feats, has, p = self.features(data)
        s = centre_score(feats, self.centres, self.score_kind, tag_prob=p)
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
            "projector": self.model.config if self.model is not None else None,
            "vocabulary": {"class_tags": self.vocab.class_tags, "freq": self.vocab.freq,
                           "class_names": self.vocab.class_names, "tag_names": [self.vocab._tag(t) for t in self.vocab.tags]},
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
        w = load_file(str(d / "weights.safetensors"))
        det.centres = w["centres"]
        if cfg["projector"] is not None:
            det.model = Projector(**cfg["projector"])
            det.model.load_state_dict({k[len("projector."):]: torch.as_tensor(t) for k, t in w.items() if k.startswith("projector.")})
            det.model = det.model.to(device).eval()
        det.device = device
        det.fitted = True
        return det


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
