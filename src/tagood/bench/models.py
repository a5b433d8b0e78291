"""Re-export of :mod:`tagood.backbones.factory` for modules not yet switched to it (to be deleted)."""

from __future__ import annotations

from tagood.backbones.factory import PATH_KEYS, build_backbone, build_dual_encoder, tagger_context

__all__ = ["PATH_KEYS", "build_backbone", "build_dual_encoder", "tagger_context"]
