"""The detector base class, :func:`create` and :func:`load` (the registry is :mod:`tagood.detectors.registry`).

Contract: ``det = create("name[key=value,...]", **options)``; ``det.fit(train, context) -> det``;
``det.score(data) -> np.ndarray`` float64 ``(N,)`` with **higher = more OOD**; ``det.save(directory)`` and
``load(directory, context)``. A detector declares its options once (``class Options``, see
:mod:`tagood.detectors.options`), the inputs it reads (``requires``) so the benchmark runner extracts each input
once, and whether it learns anything from the training split (``requires_fit``).
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.detectors import persist
from tagood.detectors.options import DetectorOptions, OptionError, validate_options
from tagood.detectors.registry import UnknownDetectorError, get_class, parse_name
from tagood.errors import CheckpointError, ConfigError, InputError

log = logging.getLogger(__name__)

__all__ = ["ContextError", "Detector", "NotFittedError", "create", "fit_once", "fits_once", "load"]


class NotFittedError(ConfigError):
    """A detector that learns from IND training data was asked to score (or be saved) before :meth:`Detector.fit`."""


class ContextError(ConfigError):
    """A detector needs side information (``tagood.Context``: the IND head, a model, pseudo-OOD data) it was not given."""


#: What to pass for each input a detector may need, in API terms (``tagood.FeatureSet(name=...)``)
INPUT_HINTS: dict[str, str] = {
    "labels": "labels: IND class ids 0..C-1, one per sample (an image-folder split has them from its class sub-folders)",
    "features": "features: (N, D) penultimate features",
    "logits": "logits: (N, C) IND-class logits (`tagood bench` uses its IND linear head's, head(features))",
    "block_norms": "block_norms: (N, B) per-block feature norms, extracted by a backbone that provides them (efficientnet-lite0)",
    "images": "images: a stream of preprocessed images (tagood.core.images.ImageStream)",
    "tokens": "tokens, tag_probs, tag_attention: extracted by a tagger backbone (ram, or efficientnet-lite0's CAM tagger)",
    "tag_probs": "tokens, tag_probs, tag_attention: extracted by a tagger backbone (ram, or efficientnet-lite0's CAM tagger)",
    "tag_attention": "tokens, tag_probs, tag_attention: extracted by a tagger backbone (ram, or efficientnet-lite0's CAM tagger)",
    "image_embeds": "image_embeds: (N, E) dual-encoder image embeddings",
    "patch_embeds": "patch_embeds: dual-encoder patch embeddings",
    "oracle_tokens": "extra['oracle_tokens']: (N, T) bool true object tokens, read by option decompose=oracle (a "
                     "diagnostic); `tagood bench` adds them for sources with object masks (the scenes benchmark)",
}

#: What to pass for each context entry a detector may need, in API terms
CONTEXT_HINTS: dict[str, str] = {
    "head": "the IND linear head: pass context=tagood.Context(head=tagood.fit_head(train)) (the head "
            "`tagood bench` fits), or give train labels -- tagood.FeatureSet(features=..., labels=...) -- and the detector "
            "fits that head itself",
    "model": "a differentiable torch model images -> IND logits: pass context=tagood.Context(model=...), e.g. "
             "tagood.detectors.head.Classifier(backbone, head)",
    "pseudo_ood": "pseudo-OOD data: pass context=tagood.Context(pseudo_ood=tagood.FeatureSet(block_norms=...)) extracted from "
                  "jigsaw-shuffled IND training images (tagood.data.JigsawSource; `tagood bench` builds it from [pseudo_ood])",
    "class_names": "the IND class names: pass context=tagood.Context(class_names=[...])",
    "dual_encoder": "a vision-language dual encoder: pass context=tagood.Context(dual_encoder=...) "
                    "(tagood.backbones.factory.build_dual_encoder)",
}


class Detector(ABC):
    """Base class of every OOD detector. Scores are OOD scores: **higher = more OOD**.

    A subclass declares ``Options`` (a :class:`tagood.detectors.options.DetectorOptions`; ``self.options`` holds the
    validated instance), ``requires`` and implements ``_score`` (and ``_fit`` when it learns from IND training data).
    To be saved it implements ``_state`` / ``_set_state`` (arrays and JSON metadata); what is not state (a torch
    model, a device) comes from ``Context`` through ``_attach``.
    """

    name: ClassVar[str] = "base"
    #: One line: the paper the method comes from (authors, title, venue).
    paper: ClassVar[str] = ""
    #: The options model; the base's has no options.
    Options: ClassVar[type[DetectorOptions]] = DetectorOptions
    #: Inputs this detector needs from a FeatureSet (see ``tagood.core.types.INPUT_FIELDS``).
    requires: ClassVar[frozenset[str]] = frozenset()
    #: Inputs needed at fit time only (default: same as ``requires``).
    fit_requires: ClassVar[frozenset[str] | None] = None
    #: Context entries needed at fit time, e.g. {"head"}, {"model"}, {"pseudo_ood"}.
    context_requires: ClassVar[frozenset[str]] = frozenset()
    #: False for a detector that learns nothing from the training split: it scores without ``fit``.
    requires_fit: ClassVar[bool] = True
    #: True when ``_fit`` takes a streamed training split itself (``FeatureSet.iter_chunks``);
    #: otherwise the streamed fields it needs are loaded into memory first (with a warning).
    streaming_fit: ClassVar[bool] = False
    #: True for test-time detectors (AdaNeg): a score may depend on the test samples seen before it, so the
    #: benchmark scores them on one seeded, shuffled stream of IND test + OOD samples
    #: (:func:`tagood.bench.stream.evaluate_stream`) and reports them apart from static detectors.
    test_time: ClassVar[bool] = False
    #: False for a detector whose state cannot be written (test-time detectors); ``not_saveable_reason`` says why.
    saveable: ClassVar[bool] = True
    not_saveable_reason: ClassVar[str] = ""
    #: True when ``_fit`` itself runs collectives of a torchrun world (TagOOD's projector trains data-parallel, each
    #: rank on its shard of every batch): every rank fits. Otherwise :func:`fit_once` fits on rank 0 alone and
    #: broadcasts the fitted state, so the other ranks never hold the training split.
    fit_collective: ClassVar[bool] = False

    options: DetectorOptions
    #: a fingerprint of the IND training split of the last ``fit`` (or of the saved one, after ``load``):
    #: :func:`tagood.detectors.manifest.fingerprint`; None before fitting
    fitted_on: dict[str, Any] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            named = [p.name for p in inspect.signature(init).parameters.values()
                     if p.name != "self" and p.kind is not p.VAR_KEYWORD]
            if named:
                raise TypeError(f"{cls.__qualname__}.__init__ takes {named}: declare options once, as fields of "
                                f"{cls.__qualname__}.Options (a tagood.detectors.options.DetectorOptions), and take "
                                f"them as __init__(self, **options), reading self.options")

    def __init__(self, **options: Any) -> None:
        """Validate ``options`` through ``Options`` and keep them as ``self.options``; ``self.hparams`` is their
        plain dict. Users create detectors with :func:`create` (``create("knn[k=10]")``).

        Args:
            **options: the detector's options, the fields of its ``Options`` model (:func:`tagood.describe` lists
                them); options not given take their defaults.

        Raises:
            tagood.detectors.options.OptionError: an option is unknown (with a "did you mean"), of the wrong type or
                out of range; the message names the option, its default and its range.
        """
        self.options = validate_options(type(self), options)
        self.hparams: dict[str, Any] = self.options.model_dump()
        self.fitted = False
        self.spec = self.name + _spec_options(self.hparams, self.options)

    # -- public API -----------------------------------------------------------------------
    def fit(self, train: FeatureSet | np.ndarray, context: Context | None = None) -> Detector:
        """Fit on IND training data and take what the detector needs from ``context``.

        A training-free detector (``requires_fit = False``: MSP, Energy, MaxLogit, ...) learns nothing here and
        scores without ``fit``; fitting it only checks the inputs and takes the context.

        Args:
            train: IND training samples with the fields ``fit_requires`` names (default: ``requires``); a bare array
                is taken as the detector's single array input (features for KNN, logits for Energy). Labels
                (``FeatureSet(labels=...)``, IND class ids ``0..C-1``) for the detectors that use them.
            context: side information (``context_requires``): the IND head, a model, pseudo-OOD data, a device.
                Default: an empty :class:`tagood.Context`.

        Returns:
            ``self``, fitted (so ``det = tagood.create("knn").fit(train)`` works).

        Raises:
            tagood.errors.InputError: ``train`` lacks a field the detector needs; the message says what to pass.
            ContextError: a context entry the detector needs is missing (a :class:`tagood.errors.ConfigError`); the
                message says how to build it, e.g. ``tagood.Context(head=tagood.fit_head(train))``.
            tagood.detectors.options.OptionError: the options cannot work on this training split (KNN's ``k``
                above the number of training samples), see :meth:`check_data`.

        Example:
            >>> import numpy as np
            >>> import tagood
            >>> rng = np.random.default_rng(0)
            >>> train = tagood.FeatureSet(features=rng.normal(size=(100, 8)))
            >>> det = tagood.create("knn[k=5]").fit(train)
            >>> det.fitted
            True
            >>> tagood.create("knn[k=500]").fit(train)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            tagood.detectors.options.OptionError: ...
        """
        context = context or Context()
        train = self._coerce(train)
        need = self.fit_requires if self.fit_requires is not None else self.requires
        self._require(train, need, "fit")
        labels = train.labels
        n_classes = None if labels is None else int(len(np.unique(np.asarray(labels)[np.asarray(labels) >= 0])))
        self.check_data(len(train), n_classes)
        missing = [c for c in sorted(self.context_requires)
                   if getattr(context, c, None) is None and not self._can_build(c, train)]
        if missing:
            raise ContextError(f"{self.name}.fit needs " + "; and ".join(CONTEXT_HINTS.get(c, f"context.{c}") for c in missing))
        if train.is_streamed(need) and not self.streaming_fit:
            log.warning("%s trains in memory: loading the streamed fields %s of '%s' (%d samples)",
                        self.name, sorted(train.streamed & set(need)), train.name, len(train))
            train = train.load_streamed(set(need))
        self._attach(context)
        self._fit(train, context)
        self.fitted = True
        self.fitted_on = self._fingerprint(train, context.class_names)  # recorded in the saved manifest
        return self

    def _fingerprint(self, train: FeatureSet, classes: list[str] | None) -> dict[str, Any]:
        """:func:`tagood.detectors.persist.fingerprint` of ``train``. A training-free detector (``requires_fit``
        False) records the split's size, labels, classes, sample ids and field shapes but no hash of its arrays:
        its state does not depend on them, and that one SHA-256 pass (7.9 GB of ImageNet features) was nearly all
        of MSP's or Energy's fit."""
        if self.requires_fit:
            return persist.fingerprint(train, classes)
        fp = persist.fingerprint(_Unhashed(train), classes)
        fp["fields"] = {n: {"dtype": str(v.dtype), "shape": [int(x) for x in v.shape]} for n in persist.FP_FIELDS
                        if isinstance(v := getattr(train, n, None), np.ndarray)}
        return fp

    def attach(self, context: Context) -> Detector:
        """Give a detector what is not part of its state -- ODIN's torch model, the device KNN searches on -- e.g.
        after :func:`load` (which calls it when given a context). Changes no fitted state.

        Args:
            context: the side information to take (the entries the detector keeps for scoring, such as
                ``model`` and ``device``; the others are ignored).

        Returns:
            ``self``.
        """
        self._attach(context)
        return self

    def score(self, data: FeatureSet | np.ndarray) -> np.ndarray:
        """OOD scores of ``data``: **higher = more OOD**.

        Scores are per sample: a sample's score does not depend on the others in ``data`` (test-time detectors
        score streams with :meth:`score_stream`).

        Args:
            data: samples with the fields ``requires`` names; a bare array is this detector's single array input
                (logits for MSP / Energy, features for KNN, ...). A streamed split is scored chunk by chunk
                (:meth:`tagood.core.featureset.FeatureSet.iter_chunks`).

        Returns:
            float64 array of shape ``(N,)``, one score per sample, higher = more OOD.

        Raises:
            NotFittedError: the detector learns from IND training data and was not fitted (nor loaded); a
                :class:`tagood.errors.ConfigError`.
            tagood.errors.InputError: ``data`` lacks a field the detector needs, or is a bare array for a detector
                with several inputs.

        Example:
            >>> import numpy as np
            >>> import tagood
            >>> logits = np.array([[9.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # confident, then uncertain
            >>> tagood.create("energy").score(logits).round(3)  # training-free: -logsumexp(logits)
            array([-9.   , -2.099])
            >>> rng = np.random.default_rng(0)
            >>> centre = rng.normal(size=8)  # the IND features point around one direction
            >>> train = tagood.FeatureSet(features=centre + 0.3 * rng.normal(size=(200, 8)))
            >>> det = tagood.create("knn[k=5]").fit(train)
            >>> s = det.score(np.stack([centre, -centre]))  # KNN compares directions (L2-normalised features)
            >>> bool(s[1] > s[0])  # the opposite direction is far from every training feature: more OOD
            True
        """
        if self.requires_fit and not self.fitted:
            raise NotFittedError(self._not_fitted_text())
        data = self._coerce(data)
        self._require(data, self.requires, "score")
        # scores are per sample: chunk by chunk (a split held in memory is one chunk)
        parts = [np.asarray(self._score(c), dtype=np.float64).reshape(-1) for c in data.iter_chunks(self.requires)]
        s = np.concatenate(parts) if parts else np.zeros(0)
        if len(s) != len(data):
            raise RuntimeError(f"{self.name} returned {len(s)} scores for {len(data)} samples")
        return s

    def score_stream(self, batches: Iterable[FeatureSet]) -> np.ndarray:
        """OOD scores of a stream of batches, concatenated in stream order: **higher = more OOD**.

        Static detectors (the default): each batch scored by :meth:`score`, independent of the others.
        Test-time detectors override this: their state (e.g. AdaNeg's feature memory) starts empty at each
        call and carries from one batch to the next.

        Args:
            batches: the batches in stream order, each a FeatureSet with the fields ``requires`` names.

        Returns:
            float64 array of shape ``(N,)``, ``N`` the total number of samples (empty for an empty stream).

        Raises:
            NotFittedError: as :meth:`score`.
            tagood.errors.InputError: as :meth:`score`.
        """
        parts = [self.score(b) for b in batches]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)

    def check_data(self, n_train: int, n_classes: int | None = None) -> None:
        """Check that the options can work on an IND training split of this size, before any work is done.

        Called by :meth:`fit`, and by ``tagood bench`` / ``tagood fit`` before any extraction. Default: every
        size works; a subclass with a size-bound option overrides it (KNN: ``k`` at most the training count).

        Args:
            n_train: the number of IND training samples.
            n_classes: the number of IND classes among their labels (``None``: the split has no labels).

        Raises:
            tagood.detectors.options.OptionError: the options cannot work on that split; the message names the
                option and the largest value that works.
        """
        return None

    def save(self, directory: str | Path) -> Path:
        """Write the detector to ``directory``: ``config.json`` (format version, detector, spec, options, fitted
        scalars) and ``weights.safetensors`` (every fitted array, in its dtype). :func:`load` reads it back and
        scores bit-identically.

        Args:
            directory: the folder to write (created if needed).

        Returns:
            The directory written.

        Raises:
            tagood.errors.ConfigError: the detector cannot be saved (test-time detectors: their state depends on
                the stream they scored); the message says why.
            NotFittedError: the detector learns from IND training data and was not fitted.
        """
        if not self.saveable:
            raise ConfigError(f"'{self.name}' cannot be saved: {self.not_saveable_reason}")
        if self.requires_fit and not self.fitted:
            raise NotFittedError(f"{self.name}: fit the detector before saving it ({self._not_fitted_text()})")
        arrays, meta = self._state()
        return persist.write(directory, self.name, self.spec, self.options.model_dump(mode="json"), meta, arrays,
                             fitted_on=self.fitted_on)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({hp})"

    # -- to implement -----------------------------------------------------------------------
    def _fit(self, train: FeatureSet, context: Context) -> None:  # default: nothing to fit
        return None

    @abstractmethod
    def _score(self, data: FeatureSet) -> np.ndarray:
        """OOD scores for ``data`` (higher = more OOD)."""

    def _attach(self, context: Context) -> None:
        """Take what is not state from ``context`` (a model, a device); called by ``fit`` and ``attach``."""
        return None

    def _can_build(self, entry: str, train: FeatureSet) -> bool:
        """True when the detector builds context entry ``entry`` itself from ``train`` (a head from labels)."""
        return False

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The fitted state: ``(arrays, metadata)``, arrays saved bit-exact, metadata JSON (numbers, text, lists)."""
        if self.requires_fit:
            raise ConfigError(f"'{self.name}' cannot be saved yet: it does not declare its fitted state (_state)")
        return {}, {}

    def _set_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore what :meth:`_state` returned (:func:`load`)."""
        return None

    # -- helpers ----------------------------------------------------------------------------
    def _not_fitted_text(self) -> str:
        need = sorted(self.fit_requires if self.fit_requires is not None else self.requires)
        fs = ", ".join(f"{n}=..." for n in need)
        ctx = ", ".join(f"{c}=..." for c in sorted(self.context_requires))
        return (f"{self.name} is not fitted: call det.fit(train{', context=tagood.Context(' + ctx + ')' if ctx else ''}) "
                f"first, with train = tagood.FeatureSet({fs}) of IND training samples, or load a saved one with "
                f"tagood.detectors.load(directory)")

    def _require(self, fs: FeatureSet, names: Iterable[str], what: str) -> None:
        missing = [n for n in sorted(names) if not fs.has(n)]
        if not missing:
            return
        have = sorted(n for n in ("labels", *INPUT_HINTS) if fs.has(n))
        hints = "; ".join(dict.fromkeys(INPUT_HINTS.get(n, n) for n in missing))
        arg = "train" if what == "fit" else "data"
        raise InputError(f"{self.name}.{what} needs inputs {missing} but the feature set '{fs.name}' only has {have}: pass "
                         f"{arg}=tagood.FeatureSet({', '.join(f'{n}=...' for n in sorted(names))}) ({hints})")

    def _coerce(self, x: FeatureSet | np.ndarray) -> FeatureSet:
        """A bare array is taken as this detector's single array input (e.g. logits)."""
        if isinstance(x, FeatureSet):
            return x
        arrays = [r for r in sorted(self.requires) if r in ("logits", "features", "tag_probs", "block_norms", "image_embeds")]
        if len(arrays) != 1:
            raise InputError(f"{self.name} needs a tagood.FeatureSet with {sorted(self.requires)}, not a bare array")
        fs = FeatureSet()
        setattr(fs, arrays[0], np.asarray(x))
        return fs


def field_array(data: FeatureSet, name: str) -> np.ndarray:
    """``data.<name>``, an array input the detector ``requires`` (so :meth:`Detector.score` checked it is there)."""
    v = getattr(data, name, None)
    if v is None:
        raise InputError(f"the feature set '{data.name}' has no {name}")
    return cast(np.ndarray, v)


class _Unhashed:
    """What :func:`tagood.detectors.persist.fingerprint` reads of a training split but its arrays."""

    def __init__(self, train: FeatureSet) -> None:
        self.labels, self.paths, self.streamed, self._n = train.labels, train.paths, train.streamed, len(train)

    def __len__(self) -> int:
        return self._n


def fits_once(det: Detector) -> bool:
    """True when, in a torchrun world, ``det`` is fitted on rank 0 alone and its state broadcast (:func:`fit_once`):
    it can hand over its fitted state (``saveable``, with ``_state`` / ``_set_state``) and its fit runs no collective
    (``fit_collective`` False). Test-time detectors and TagOOD's projector-trained family fit on every rank."""
    declares_state = not det.requires_fit or type(det)._state is not Detector._state
    return det.saveable and declares_state and not det.fit_collective


def fit_once(det: Detector, train: FeatureSet | np.ndarray | None, context: Context | None = None) -> Detector:
    """``det.fit(train, context)`` once for a whole torchrun world: rank 0 fits, every other rank receives the
    fitted state (``_state``, its arrays bit-exact through
    :func:`tagood.runtime.distributed.broadcast_arrays`, and the training fingerprint) and takes ``context`` as
    :meth:`Detector.attach` does; so the other ranks need no training data (pass ``None`` there) and score exactly
    as rank 0 does. In a world of 1, or for a detector that must fit on every rank (:func:`fits_once` False:
    ``train`` is then needed on every rank), it is ``det.fit(train, context)``.

    Args:
        det: the detector (its scores: higher = more OOD).
        train: the IND training samples, read on rank 0 only (on every rank when ``fits_once(det)`` is False).
        context: side information, as for :meth:`Detector.fit`; every rank takes what it keeps for scoring.

    Returns:
        ``det``, fitted, on every rank.

    Raises:
        Exception: what ``det.fit`` raised on rank 0, on rank 0; on the other ranks a
            :class:`tagood.errors.ConfigError` naming the detector and rank 0's error.
    """
    from tagood.runtime import distributed

    w = distributed.world()
    if not w.distributed or not fits_once(det):
        if train is None:
            raise InputError(f"{det.name}.fit on rank {w.rank}: this detector fits on every rank and needs the training "
                             f"split there")
        return det.fit(train, context)
    context = context or Context()
    error: str | None = None
    arrays: dict[str, np.ndarray] | None = None
    meta: Any = None
    if w.is_main:
        try:
            if train is None:
                raise InputError(f"{det.name}.fit: rank 0 needs the training split")
            det.fit(train, context)
            arrays, meta = det._state()
            meta = (dict(meta), det.fitted_on)
        except Exception as e:  # every rank learns of the failure (the broadcast below must not hang)
            error = f"{type(e).__name__}: {e}"
            distributed.broadcast((error, None))
            raise
    error, meta = distributed.broadcast((error, meta))
    if error is not None:
        raise ConfigError(f"{det.name}: the fit on rank 0 failed ({error})")
    arrays = distributed.broadcast_arrays(arrays)
    if not w.is_main:
        state, fitted_on = meta
        det._set_state(arrays, state)
        det.fitted = True
        det.fitted_on = fitted_on
        det._attach(context)
        log.debug("%s: fitted state received from rank 0 (%d arrays)", det.name, len(arrays))
    return det


def _spec_options(hparams: Mapping[str, Any], options: DetectorOptions) -> str:
    """``[k=v,...]`` of the options that differ from their defaults (``''`` when none do)."""
    fields = type(options).model_fields
    diff = [f"{k}={v}" for k, v in hparams.items() if k in fields and fields[k].default != v]
    return f"[{','.join(diff)}]" if diff else ""


def create(spec: str, **options: Any) -> Detector:
    """Create a detector from a name or a spec with options, ``'name[key=value,...]'``; keyword ``options`` are
    merged in (they win). Options are validated against the detector's ``Options`` before any work is done.

    Args:
        spec: a registered name (:func:`tagood.detectors.available`), optionally with options in brackets.
        **options: more options, e.g. ``create("knn", k=10)``.
    Returns:
        The detector, unfitted; its scores are **higher = more OOD**.
    Raises:
        tagood.detectors.options.OptionError: an option is unknown (with a "did you mean"), of the wrong type or
            out of range.
        tagood.detectors.registry.UnknownDetectorError: no detector of that name (a ``KeyError``).

    Example:
        >>> import numpy as np
        >>> det = create("energy[temperature=2]")
        >>> det.options.temperature
        2.0
        >>> det.score(np.array([[0.0, 0.0]])).round(4)  # training-free: no fit needed
        array([-1.3863])
    """
    base, opts = parse_name(spec)
    cls = get_class(base)
    det: Detector = cls(**{**opts, **options})
    det.spec = spec
    return det


def load(directory: str | Path, context: Context | None = None) -> Detector:
    """Read a detector written by :meth:`Detector.save`; it scores bit-identically to the saved one.

    Args:
        directory: the folder holding ``config.json`` and ``weights.safetensors``.
        context: what is not saved, given again (:meth:`Detector.attach`): ODIN's differentiable model
            (``tagood.Context(model=...)``), the torch device KNN searches on.
    Returns:
        The fitted detector.
    Raises:
        tagood.errors.CheckpointError: a file is missing, damaged, of another format, does not match its
            detector, or differs from what its ``manifest.json`` records (edited, swapped, no manifest:
            :func:`tagood.detectors.persist.verify`); the message names the file.
    """
    cfg, arrays, where = persist.read(directory)
    try:
        cls = get_class(cfg.detector)
    except UnknownDetectorError as e:
        raise CheckpointError(f"{where}: {e}; was it saved by a newer tagood or a plugin not imported?") from None
    try:
        det: Detector = cls(**cfg.options)
    except OptionError as e:
        raise CheckpointError(f"{where}: its options do not fit this tagood's {cfg.detector}: {e}") from None
    manifest = persist.verify(directory)  # the files are the ones saved, before any state is restored from them
    try:
        det._set_state(arrays, cfg.state)
    except Exception as e:  # noqa: BLE001 - any failure to restore a saved state is a damaged file
        raise CheckpointError(f"{where}: its state does not fit {cfg.detector} ({type(e).__name__}: {e}); "
                              f"save the detector again") from None
    det.fitted = True
    det.fitted_on = manifest.fitted_on
    det.spec = cfg.spec
    if context is not None:
        det.attach(context)
    return det
