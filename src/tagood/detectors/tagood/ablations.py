"""The class-centre ablations of TagOOD (Li et al., ACM MM 2024, Table 3): what the projector and its EMA centres add.

* ``cs`` (:class:`CS`): no projector; an image's feature is the mean of its object tokens and the centres are the
  class means of the training features: ``score(x) = -max_c cos(mean(x_obj), mean_{y_i = c} mean(x_i,obj))``.
* ``ce+cs`` (:class:`CECS`): the projector trained with cross-entropy only (``mse_weight`` 0); the centres are the
  class means of its training features: ``score(x) = -max_c cos(g(x_obj), mean_{y_i = c} g(x_i,obj))``.

Both: **higher = more OOD**, with the decomposition and the no-tag rule of TagOOD
(:class:`tagood.detectors.tagood.centres.CentreDetector`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from tagood.core.validation import NonNegFloat
from tagood.detectors.registry import register
from tagood.detectors.tagood.centres import CentreDetector
from tagood.detectors.tagood.method import TagOOD

__all__ = ["CECS", "CS"]


@register("cs")
class CS(CentreDetector):
    """CS (TagOOD Table 3): class centres = class means of the decomposed features (the mean of the object tokens),
    no projector; cosine score ``-max_c cos(f, centre_c)`` (higher = more OOD). It trains nothing, so it has no
    training options. Saved: the tag rule, the vocabulary, the no-tag rule and the centres; a loaded CS needs
    nothing from ``Context``. See :class:`tagood.detectors.tagood.centres.CentreDetector`."""


@register("ce+cs")
class CECS(TagOOD):
    """(CE)+CS (TagOOD Table 3): the projector trained with cross-entropy only (``mse_weight`` 0 unless given);
    centres = class means of its training features; cosine score ``-max_c cos(g(x), centre_c)`` (higher = more OOD).
    Saved and loaded like :class:`tagood.detectors.tagood.method.TagOOD` (the projector on ``Context.device``)."""

    class Options(TagOOD.Options):
        mse_weight: NonNegFloat = Field(0.0, description="weight of the MSE to the EMA centres; 0 (the ablation): the "
                                                         "projector is trained with cross-entropy only")

        @classmethod
        def preset_values(cls, preset: str) -> dict[str, Any]:
            """The preset's values, but ``mse_weight`` 0: the ablation is defined by it."""
            return {**super().preset_values(preset), "mse_weight": 0.0}

    options: Options
    centres_from: ClassVar[str] = "mean"
