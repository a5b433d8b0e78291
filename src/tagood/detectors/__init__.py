"""OOD detectors: one per module, a registry, a common base (higher score = more OOD)."""

from tagood.detectors.base import Detector, create
from tagood.detectors.registry import available, get_class, parse_name, register

__all__ = ["Detector", "available", "create", "get_class", "parse_name", "register"]
