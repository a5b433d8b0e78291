"""Common base of the vision-language detectors: their shared options (:class:`VLMOptions`), the IND class-prompt
embeddings built from a dual encoder, and what is saved of them. Scores are OOD scores: **higher = more OOD**.

What a vision-language detector learns is text-side: the IND class-prompt embeddings (and, per method, negative
labels, a learned prompt context or NFT weights). All of it is state: :meth:`VLMDetector.save` writes it and
:func:`tagood.detectors.load` reads it back, so a loaded detector scores ``image_embeds`` without any encoder. The
dual encoder itself is **not** state: it is given through ``tagood.Context(dual_encoder=...)`` at fit time, and the
same encoder must produce the image embeddings scored later. The saved state records the encoder's ``id`` and
``weights_hash``; ``tagood.detectors.load(directory, context=tagood.Context(dual_encoder=enc))`` (or
``det.attach(...)``) checks that ``enc`` is that encoder.

Zero-shot detectors (MCM, GL-MCM, NegLabel, CSP, AdaNeg) learn nothing from IND training images: ``requires_fit``
is False, and ``det.attach(tagood.Context(dual_encoder=enc, class_names=[...]))`` builds their prompts (and mines
their negative labels) without a training split; ``fit(train, context)`` does the same and ignores ``train``.
LoCoOp and KR-NFT train on few-shot IND images and need ``fit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from tagood.backbones.prompts import DEFAULT_TEMPLATE, NAMED_TEMPLATES, encode_prompts, resolve_templates
from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.core.numeric import l2_normalize, softmax
from tagood.core.validation import NonNegInt, PosInt
from tagood.detectors.base import ContextError, Detector, NotFittedError
from tagood.detectors.options import DetectorOptions
from tagood.errors import ConfigError

__all__ = ["FewShotDetector", "FewShotOptions", "SeededOptions", "VLMDetector", "VLMOptions", "encoder_identity",
           "few_shot_indices", "mcm_confidence"]

_NAMED = ", ".join(sorted(NAMED_TEMPLATES))


def mcm_confidence(image_embeds: np.ndarray, text: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """MCM confidence ``max_c softmax_c(cos(x, t_c) / tau)`` (Ming et al., NeurIPS 2022).

    Args:
        image_embeds: ``(N, E)`` image embeddings (normalised here).
        text: ``(C, E)`` IND class-prompt embeddings (normalised here).
        tau: softmax temperature on the raw cosines (the paper: 1).
    Returns:
        ``(N,)`` float64 confidences in ``[1/C, 1]``: **higher = more IND** (MCM's score is its negative).
    """
    return softmax(l2_normalize(image_embeds) @ l2_normalize(text).T / tau).max(axis=1)


def few_shot_indices(labels: np.ndarray, shots: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to ``shots`` samples per class, drawn with ``seed`` (all labelled samples when
    ``shots`` is None); the few-shot pick LoCoOp and KR-NFT train on.

    Args:
        labels: ``(N,)`` IND class ids (negative ids are left out).
        shots: samples per class, or None for all.
        seed: the draw's seed.
    Returns:
        ``(M,)`` int64 sorted indices into ``labels``.
    """
    labels = np.asarray(labels)
    if shots is None:
        return np.flatnonzero(labels >= 0)
    rng = np.random.default_rng(seed)
    out = [rng.permutation(np.flatnonzero(labels == c))[: int(shots)] for c in np.unique(labels[labels >= 0])]
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def encoder_identity(encoder: Any) -> dict[str, str]:
    """``{"id", "weights_hash"}`` of a dual encoder (empty text where it has none): what a saved vision-language
    detector records of the encoder its text embeddings came from."""
    return {"id": str(getattr(encoder, "id", None) or type(encoder).__name__),
            "weights_hash": str(getattr(encoder, "weights_hash", "") or "")}


class VLMOptions(DetectorOptions):
    """Options every vision-language detector has: the prompt template(s) of the IND class names."""

    template: str = Field(DEFAULT_TEMPLATE, description="prompt template of each IND class name, '{}' is the name "
                                                        "(CLIP's zero-shot prompt)")
    templates: str | list[str] | None = Field(None, description=f"a list of templates whose embeddings are averaged, or a "
                                                                f"named list ({_NAMED}; clip7 = CLIP's 7-template "
                                                                f"ensemble); overrides template")

    @field_validator("template")
    @classmethod
    def _placeholder(cls, v: str) -> str:
        if "{}" not in v:
            raise ValueError(f"a prompt template needs a '{{}}' placeholder for the class name, e.g. {DEFAULT_TEMPLATE!r}")
        return v

    @field_validator("templates")
    @classmethod
    def _known_templates(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, str) and v not in NAMED_TEMPLATES and "{}" not in v:
            raise ValueError(f"unknown template list {v!r}; named lists: {_NAMED}, or give a list of templates with a "
                             "'{}' placeholder")
        if isinstance(v, list) and any("{}" not in t for t in v):
            raise ValueError("every prompt template needs a '{}' placeholder for the class name")
        return v


class SeededOptions(VLMOptions):
    """The seed of a vision-language method that draws at random."""

    seed: NonNegInt = Field(0, description="seed of every random draw: the candidate-word subsample, the negative-label "
                                           "groups, the few-shot pick, the training")


class FewShotOptions(SeededOptions):
    """Options of the methods that train on few-shot IND images (LoCoOp, KR-NFT)."""

    shots: PosInt | None = Field(16, description="IND training images per class, a seeded pick (none = all)")


class VLMDetector(Detector):
    """Base of the detectors that score dual-encoder image embeddings against IND class prompts.

    Building the prompts needs ``context.dual_encoder`` (a :class:`tagood.backbones.dual_encoder.DualEncoder`) and
    ``context.class_names``; the prompt embeddings are kept (and saved), so scoring needs only ``image_embeds``
    (plus ``patch_embeds`` for the local scores) computed by the same encoder. Options: :class:`VLMOptions`.
    """

    Options: ClassVar[type[DetectorOptions]] = VLMOptions
    options: VLMOptions
    requires: ClassVar[frozenset[str]] = frozenset({"image_embeds"})
    context_requires: ClassVar[frozenset[str]] = frozenset({"dual_encoder", "class_names"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        #: the prompt templates in use (``templates`` resolved, else ``[template]``)
        self.templates: list[str] = resolve_templates(self.options.templates, self.options.template)
        self._clear()

    # -- state ------------------------------------------------------------------------------------------
    def _clear(self) -> None:
        """Forget everything built from a context (a new fit starts from nothing)."""
        #: ``(C, E)`` float32 IND class-prompt embeddings (learned ones for LoCoOp)
        self.text: np.ndarray | None = None
        self.class_names: list[str] = []
        self.logit_scale = 100.0
        #: the dual encoder the text embeddings came from (:func:`encoder_identity`)
        self.encoder_ref: dict[str, str] | None = None

    def fit(self, train: FeatureSet | np.ndarray, context: Context | None = None) -> VLMDetector:
        """Build the IND class prompts from ``context`` (and train, for the few-shot methods). Returns ``self``.

        Args:
            train: IND training samples with the fields ``fit_requires`` names (zero-shot detectors read none:
                ``tagood.FeatureSet()`` will do).
            context: ``tagood.Context(dual_encoder=..., class_names=[...])``.
        Returns:
            ``self``, ready to score image embeddings of the same dual encoder.
        """
        self._clear()
        super().fit(train, context)
        return self

    def _attach(self, context: Context) -> None:
        enc = context.dual_encoder
        if self.text is not None:
            if enc is not None:
                self._check_encoder(enc)
            names = [str(c) for c in context.class_names or []]
            if names and names != self.class_names:
                raise ConfigError(f"{self.name} was built for the IND classes {self.class_names[:5]}"
                                  f"{'...' if len(self.class_names) > 5 else ''}, not {names[:5]}"
                                  f"{'...' if len(names) > 5 else ''}: fit it again for other classes, "
                                  "det.fit(train, context=tagood.Context(dual_encoder=..., class_names=[...]))")
            return
        if not self.requires_fit and enc is not None and context.class_names:  # zero-shot: the prompts are all it needs
            self._build(context)

    def _fit(self, train: FeatureSet, context: Context) -> None:
        if self.text is None:
            self._build(context)

    def _build(self, context: Context) -> None:
        """Encode the IND class prompts; zero-shot detectors add what else they build from the text encoder."""
        enc = self._encoder(context)
        names = [str(c) for c in (context.class_names or [])]
        if not names:
            raise ContextError(f"{self.name} needs the IND class names: pass context=tagood.Context(class_names=[...], "
                               "dual_encoder=...)")
        self.text = encode_prompts(enc, names, self.templates)
        self.class_names = names
        self.logit_scale = float(getattr(enc, "logit_scale", 100.0))
        self.encoder_ref = encoder_identity(enc)

    def _encoder(self, context: Context) -> Any:
        enc = context.dual_encoder
        if enc is None or not hasattr(enc, "encode_texts"):
            raise ContextError(f"{self.name} needs a vision-language dual encoder with encode_texts: pass "
                               "context=tagood.Context(dual_encoder=...) (tagood.backbones.factory.build_dual_encoder; "
                               "protocol tagood.backbones.dual_encoder.DualEncoder)")
        return enc

    def _check_encoder(self, encoder: Any) -> None:
        """Refuse a dual encoder other than the one the text embeddings came from."""
        ref, got = self.encoder_ref, encoder_identity(encoder)
        if not ref:
            return
        same_hash = not (ref["weights_hash"] and got["weights_hash"]) or ref["weights_hash"] == got["weights_hash"]
        if ref["id"] != got["id"] or not same_hash:
            raise ConfigError(f"{self.name} was built with dual encoder {ref['id']} (weights {ref['weights_hash'] or '?'}), "
                              f"not {got['id']} (weights {got['weights_hash'] or '?'}): its text embeddings only match image "
                              "embeddings of that encoder; pass that one, or fit the detector again with this one")

    def _prompt_rows(self) -> np.ndarray:
        """The IND prompt embeddings, or an error saying how to build them."""
        if self.text is None:
            if self.requires_fit:
                raise NotFittedError(self._not_fitted_text())
            raise NotFittedError(f"{self.name} has no IND class prompts yet (zero-shot: no training data needed): call "
                                 "det.attach(tagood.Context(dual_encoder=..., class_names=[...])), or det.fit(train, "
                                 "context=...), or load a saved one with tagood.detectors.load(directory)")
        return self.text

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``text``; metadata: class names, logit scale, the encoder's identity."""
        return ({"text": self._prompt_rows()},
                {"class_names": list(self.class_names), "logit_scale": self.logit_scale, "encoder": self.encoder_ref})

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        self.text = np.asarray(arrays["text"])
        self.class_names = [str(c) for c in meta["class_names"]]
        self.logit_scale = float(meta["logit_scale"])
        ref = meta.get("encoder")
        self.encoder_ref = {"id": str(ref["id"]), "weights_hash": str(ref["weights_hash"])} if ref else None


class FewShotDetector(VLMDetector):
    """Base of the vision-language detectors that train on a seeded few-shot pick of the IND training images
    (:func:`few_shot_indices` with ``shots`` and ``seed``): LoCoOp and KR-NFT. They need ``fit``."""

    Options: ClassVar[type[DetectorOptions]] = FewShotOptions
    options: FewShotOptions

    @property
    def shots(self) -> int | None:
        """IND training images per class it trains on (``options.shots``; the benchmark runner picks the same)."""
        return self.options.shots

    @property
    def seed(self) -> int:
        """The seed of its shot pick and training (``options.seed``)."""
        return self.options.seed
