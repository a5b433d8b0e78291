"""OOD detectors: one per module, a registry, a common base (higher score = more OOD).

``create(spec)`` builds one, ``available()`` lists them, ``describe(name)`` lists a detector's options,
``load(directory)`` reads one written by ``Detector.save``. Each classic module also has a functional
``score(...)``, e.g. ``tagood.detectors.energy.score(logits, temperature=1.0)``.
"""

from tagood.detectors.base import ContextError, Detector, NotFittedError, create, load
from tagood.detectors.options import DetectorOptions, OptionError, OptionInfo, describe
from tagood.detectors.registry import UnknownDetectorError, available, get_class, parse_name, register

__all__ = ["ContextError", "Detector", "DetectorOptions", "NotFittedError", "OptionError", "OptionInfo",
           "UnknownDetectorError", "available", "create", "describe", "get_class", "load", "parse_name", "register"]
