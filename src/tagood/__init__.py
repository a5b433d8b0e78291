"""tagood: out-of-distribution detection with tagging and vision-language models.

Score convention everywhere: a detector returns an OOD score, **higher = more OOD**.

The public API is importable from here with one import; each name is loaded on first use, so
``import tagood`` is cheap and the sub-packages keep their layers (``tagood.core`` never imports a detector).

Example:
    >>> import numpy as np
    >>> import tagood
    >>> rng = np.random.default_rng(0)
    >>> centres = 3 * rng.normal(size=(4, 16))          # 4 IND classes
    >>> y = rng.integers(0, 4, 300)
    >>> x = centres[y] + rng.normal(size=(300, 16))
    >>> train = tagood.FeatureSet(features=x[:200], labels=y[:200])
    >>> ind = tagood.FeatureSet(features=x[200:])
    >>> ood = tagood.FeatureSet(features=3 * rng.normal(size=(100, 16)))
    >>> det = tagood.create("knn[k=5]").fit(train)
    >>> tagood.ood_metrics(det.score(ind), det.score(ood))["auroc"] > 0.9
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tagood._version import __version__

if TYPE_CHECKING:  # the names below, for type checkers and IDEs (loaded lazily at run time by __getattr__)
    from tagood.bench.compare import ComparisonResult, compare
    from tagood.core.context import Context
    from tagood.core.featureset import FeatureSet
    from tagood.detectors.base import Detector, create, load
    from tagood.detectors.head import fit_head, with_head_logits
    from tagood.detectors.options import OptionError, describe
    from tagood.detectors.registry import available
    from tagood.errors import CacheError, CheckpointError, ConfigError, InputError, MissingDependencyError, TagoodError
    from tagood.extract.features import extract_features
    from tagood.metrics import ood_metrics

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Context": "tagood.core.context",
    "FeatureSet": "tagood.core.featureset",
    "Detector": "tagood.detectors.base",
    "create": "tagood.detectors.base",
    "load": "tagood.detectors.base",
    "available": "tagood.detectors.registry",
    "describe": "tagood.detectors.options",
    "OptionError": "tagood.detectors.options",
    "fit_head": "tagood.detectors.head",
    "with_head_logits": "tagood.detectors.head",
    "extract_features": "tagood.extract.features",
    "ood_metrics": "tagood.metrics",
    "compare": "tagood.bench.compare",
    "ComparisonResult": "tagood.bench.compare",
    "TagoodError": "tagood.errors",
    "ConfigError": "tagood.errors",
    "InputError": "tagood.errors",
    "CacheError": "tagood.errors",
    "CheckpointError": "tagood.errors",
    "MissingDependencyError": "tagood.errors",
}

__all__ = [
    "CacheError",
    "CheckpointError",
    "ComparisonResult",
    "ConfigError",
    "Context",
    "Detector",
    "FeatureSet",
    "InputError",
    "MissingDependencyError",
    "OptionError",
    "TagoodError",
    "__version__",
    "available",
    "compare",
    "create",
    "describe",
    "extract_features",
    "fit_head",
    "load",
    "ood_metrics",
    "with_head_logits",
]


def __getattr__(name: str) -> Any:
    """Load a public name on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tagood' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
