"""Energy score (Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020).

The free energy of the logits, ``E(x) = -T * logsumexp(f(x) / T)``: in-distribution samples get larger logits, so
lower energy. Score = ``E(x)``, **higher = more OOD**. Learns nothing from the training split.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from numpy.typing import ArrayLike
from pydantic import Field

from tagood.core.featureset import FeatureSet
from tagood.core.validation import PosFloat
from tagood.detectors._common import as_tensor, compute_dtype, logit_parts
from tagood.detectors.base import Detector, field_array
from tagood.detectors.options import DetectorOptions
from tagood.detectors.registry import register

PAPER = "Liu, Wang, Owens & Li, Energy-based Out-of-distribution Detection, NeurIPS 2020"


def score(logits: ArrayLike, temperature: float = 1.0) -> np.ndarray:
    """Energy OOD score of each row of ``logits``: ``E(x) = -T * logsumexp(logits / T)``, **higher = more OOD**.

    Args:
        logits: ``(N, C)`` IND-class logits. ``tagood bench`` scores the logits of its IND linear head,
            ``head(features)``, not a backbone's ImageNet logits.
        temperature: ``T > 0`` (the paper: 1).
    Returns:
        ``(N,)`` float64 scores.

    Precision: float64 logits are computed in float64 (:func:`tagood.detectors._common.logit_parts`); float32 /
    float16 logits in float32 (:func:`logsumexp_rows`, no copy to float64), about 1e-7 relative from the float64
    value. The energy does not saturate, so float32 makes no ties that float64 would not (unlike MSP near -1).

    Example:
        >>> import numpy as np
        >>> from tagood.detectors import energy
        >>> energy.score(np.array([[0.0, 0.0], [10.0, 0.0]])).round(4)  # -log 2; -(10 + log(1 + e^-10))
        array([ -0.6931, -10.    ])
    """
    a = np.asarray(logits)
    if compute_dtype(a) == torch.float32 and a.ndim == 2 and temperature > 0:
        x = as_tensor(a, torch.float32)
        lse = logsumexp_rows(x / temperature if temperature != 1.0 else x)
        return lse.mul_(-temperature).double().numpy()  # x * -1.0 is exactly -x
    m, r = logit_parts(a, temperature)
    return -temperature * (m + np.log1p(r))


#: ``log`` of the smallest unshifted exponential sum :func:`logsumexp_rows` keeps (2^-100): above it, the terms that
#: float32 cannot hold as normal numbers (below 2^-126) weigh less than 2^-26 of the sum
_LOG_SAFE_SUM = -100.0 * float(np.log(2.0))


def logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    """``log(sum(exp(x)))`` of each row of a 2-d float tensor, in its dtype: ``torch.logsumexp(x, dim=1)`` in two
    passes over ``x`` instead of four.

    ``torch.logsumexp`` first takes each row's maximum ``m`` and then sums ``exp(x - m)``, a shift only needed to keep
    the exponentials in range. Here the rows are exponentiated unshifted (each ``exp`` of an exact float is rounded
    to about one ulp whatever its size, as ``exp(x - m)`` is) and summed; a row whose sum is not finite or below
    ``2^-100`` (a logit above ~88 in float32, every logit below ~-69, an infinity or a NaN) is recomputed by
    ``torch.logsumexp``. Both give the log-sum-exp to about 1e-7 relative (float32).

    Args:
        x: ``(N, C)`` tensor, ``C >= 1``.
    Returns:
        ``(N,)`` tensor of ``x``'s dtype, a new tensor the caller may write into.
    """
    out = torch.exp(x).sum(dim=1).log_()
    if out.numel():
        lo, hi = torch.aminmax(out)
        if not (float(lo) >= _LOG_SAFE_SUM and float(hi) < float("inf")):  # NaN fails both tests
            bad = ~(torch.isfinite(out) & (out >= _LOG_SAFE_SUM))
            out[bad] = torch.logsumexp(x[bad], dim=1)
    return out


@register("energy")
class Energy(Detector):
    """Free energy of the logits (Liu et al., NeurIPS 2020). Score = ``-T logsumexp(logits / T)`` (higher = more
    OOD); training-free. See :func:`score`."""

    class Options(DetectorOptions):
        temperature: PosFloat = Field(1.0, description="temperature T of -T logsumexp(logits / T); the paper uses 1")

    options: Options
    paper: ClassVar[str] = PAPER
    requires = frozenset({"logits"})
    fit_requires = frozenset()  # nothing is learned from the training split
    requires_fit = False

    def _score(self, data: FeatureSet) -> np.ndarray:
        return score(field_array(data, "logits"), self.options.temperature)
