"""Detector base class and ``create`` (the registry is :mod:`tagood.detectors.registry`).

Contract (DESIGN section 3): ``det = create(name, **hparams)``; ``det.fit(train, context) -> det``;
``det.score(data) -> np.ndarray[float64] (N,)`` with **higher = more OOD**. Each detector declares
the inputs it needs in ``requires`` so the benchmark runner extracts each input once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from tagood.core.featureset import FeatureSet
from tagood.core.context import Context
from tagood.detectors.registry import _REGISTRY, get_class, parse_name

log = logging.getLogger(__name__)

class Detector(ABC):
    """Base class. Subclasses set ``requires`` and implement ``_fit`` and ``_score``.

    Scores are OOD scores: **higher = more OOD**.
    """

    name: ClassVar[str] = "base"
    #: Inputs this detector needs from a FeatureSet (see ``tagood.core.types.INPUT_FIELDS``).
    requires: ClassVar[frozenset[str]] = frozenset()
    #: Inputs needed at fit time only (default: same as ``requires``).
    fit_requires: ClassVar[frozenset[str] | None] = None
    #: Context entries needed at fit time, e.g. {"head"}, {"model"}, {"pseudo_ood"}.
    context_requires: ClassVar[frozenset[str]] = frozenset()
    #: True when ``_fit`` takes a streamed training split itself (``FeatureSet.iter_chunks``);
    #: otherwise the streamed fields it needs are loaded into memory first (with a warning).
    streaming_fit: ClassVar[bool] = False
    #: True for test-time detectors (AdaNeg): a score may depend on the test samples seen before it, so the
    #: benchmark scores them on one seeded, shuffled stream of IND test + OOD samples
    #: (:func:`tagood.bench.stream.evaluate_stream`) and reports them apart from static detectors.
    test_time: ClassVar[bool] = False

    def __init__(self, **hparams: Any) -> None:
        self.hparams = hparams
        self.fitted = False

    # -- public API -----------------------------------------------------------------------
    def fit(self, train: FeatureSet, context: Context | None = None) -> "Detector":
        """Fit on IND training data. Returns ``self``."""
        context = context or Context()
        train = self._coerce(train)
        need = self.fit_requires if self.fit_requires is not None else self.requires
        train.require(need, f"{self.name}.fit")
        if train.is_streamed(need) and not self.streaming_fit:
            log.warning("%s trains in memory: loading the streamed fields %s of '%s' (%d samples)",
                        self.name, sorted(train.streamed & set(need)), train.name, len(train))
            train = train.load_streamed(set(need))
        missing = [c for c in self.context_requires if getattr(context, c, None) is None]
        if missing:
            raise ValueError(f"{self.name}.fit needs context {missing} (see tagood.core.context.Context)")
        self._fit(train, context)
        self.fitted = True
        return self

    def score(self, data: FeatureSet | np.ndarray) -> np.ndarray:
        """OOD scores, float64 of shape (N,): **higher = more OOD**. ``_score`` sees the split chunk by
        chunk (:meth:`tagood.core.featureset.FeatureSet.iter_chunks`): a streamed split in cache shards, a split
        held in memory (or whose streamed fields this detector does not need) as one chunk."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() before score()")
        data = self._coerce(data)
        data.require(self.requires, f"{self.name}.score")
        # scores are per sample: chunk by chunk (a split held in memory is one chunk)
        parts = [np.asarray(self._score(c), dtype=np.float64).reshape(-1) for c in data.iter_chunks(self.requires)]
        s = np.concatenate(parts) if parts else np.zeros(0)
        if len(s) != len(data):
            raise RuntimeError(f"{self.name} returned {len(s)} scores for {len(data)} samples")
        return s

    def score_stream(self, batches: Iterable[FeatureSet]) -> np.ndarray:
        """OOD scores of a stream of batches, concatenated in stream order, float64: **higher = more OOD**.

        Static detectors (the default): each batch scored by :meth:`score`, independent of the others.
        Test-time detectors override this: their state (e.g. AdaNeg's feature memory) starts empty at each
        call and carries from one batch to the next.
        """
        parts = [self.score(b) for b in batches]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({hp})"

    # -- to implement -----------------------------------------------------------------------
    def _fit(self, train: FeatureSet, context: Context) -> None:  # default: nothing to fit
        return None

    @abstractmethod
    def _score(self, data: FeatureSet) -> np.ndarray:
        """OOD scores for ``data`` (higher = more OOD)."""

    # -- helpers ----------------------------------------------------------------------------
    def _coerce(self, x: FeatureSet | np.ndarray) -> FeatureSet:
        """A bare array is taken as this detector's single array input (e.g. logits)."""
        if isinstance(x, FeatureSet):
            return x
        arrays = [r for r in sorted(self.requires) if r in ("logits", "features", "tag_probs", "block_norms", "image_embeds")]
        if len(arrays) != 1:
            raise TypeError(f"{self.name} needs a FeatureSet with {sorted(self.requires)}, not a bare array")
        return FeatureSet(**{arrays[0]: np.asarray(x)})


def create(spec: str, **hparams: Any) -> Detector:
    """Create a detector from a name or a variant spec like ``'react[percentile=95]'``; an unknown name
    raises ``KeyError`` (with a "did you mean"), an option that is unknown, of the wrong type or out of range
    ``tagood.detectors.options.OptionError`` (a ``ValueError``) -- checked against the detector's option schema
    (:data:`tagood.detectors.options.DETECTOR_OPTIONS`) before any work is done. Scores: higher = more OOD."""
    from tagood.detectors.options import check_detector_options, suggest

    base, opts = parse_name(spec)
    try:
        cls = get_class(base)
    except KeyError:
        raise KeyError(f"unknown detector '{base}'{suggest(base, _REGISTRY)}; available: {', '.join(sorted(_REGISTRY))}") from None
    kw = check_detector_options(base, cls, {**opts, **hparams})
    det = cls(**kw)
    det.spec = spec  # type: ignore[attr-defined]
    return det
