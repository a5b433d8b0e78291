"""tagood: out-of-distribution detection with tagging and vision-language models.

Score convention everywhere: a detector returns an OOD score, **higher = more OOD**.
"""

from tagood.core.context import Context
from tagood.core.featureset import FeatureSet
from tagood.detectors import available, create
from tagood.errors import CacheError, CheckpointError, ConfigError, InputError, TagoodError
from tagood.metrics import ood_metrics

__version__ = "0.1.0"

__all__ = ["CacheError", "CheckpointError", "ConfigError", "Context", "FeatureSet", "InputError", "TagoodError",
           "__version__", "available", "create", "ood_metrics"]
