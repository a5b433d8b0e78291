"""The decision a saved detector makes (``tagood fit`` / ``tagood score``): a threshold on its OOD score (higher =
more OOD) from held-out IND images, and the no-tag rule of the tag-based methods.

* ``is_ood = score > threshold``, **or** the image has no kept IND tag and the method's no-tag rule is ``ood``
  (TagOOD paper section 3.5: such an image is OOD; it scores ``NO_TAG_SCORE``).
* ``threshold`` is the smallest held-out score that accepts at least 95% of the held-out images, counting the
  no-tag ones (rule ``ood``) as rejected. When more than 5% of them have no tag, 95% cannot be reached: the
  threshold then accepts every tagged held-out image, the true-positive rate actually reached is saved
  (``heldout_tpr``) and a warning says the threshold is degenerate.
* A NaN score is never "in-distribution": fitting or scoring stops with an error naming the method, how many
  scores are NaN and, where it can tell, the cause (:func:`nan_cause`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tagood.detectors.tagood.scores import NO_TAG_SCORE
from tagood.errors import InputError

#: the IND true-positive rate the saved threshold aims at on held-out IND images
TARGET_TPR = 0.95


class NaNScoreError(InputError):
    """A detector gave NaN scores: they cannot be judged in- or out-of-distribution; the message says how many and,
    where it can tell, why (a diverged training, a damaged detector file, damaged features)."""


def is_tag_based(det: Any) -> bool:
    """A detector that reads the tagger's tags (TagOOD, CS, (CE)+CS, TagScore) and so has a no-tag rule."""
    return "tag_probs" in set(det.requires) | set(det.fit_requires or ())


def no_tag_rule(det: Any) -> str | None:
    """The fitted detector's rule for images with no kept IND tag: ``"ood"`` (the paper; they score ``NO_TAG_SCORE``),
    ``"fallback"`` (scored with all their tokens), None for a method without tags."""
    if not is_tag_based(det):
        return None
    rule = getattr(det, "no_tag", None) or det.hparams.get("no_tag")
    return "fallback" if rule == "fallback" else "ood"


def _no_tag(scores: np.ndarray, rule: str | None) -> np.ndarray:
    return scores >= NO_TAG_SCORE if rule == "ood" else np.zeros(len(scores), bool)


def is_ood(scores: np.ndarray, threshold: float, rule: str | None) -> np.ndarray:
    """The saved decision: above the threshold, or no kept tag under the ``ood`` rule.

    Args:
        scores: ``(N,)`` OOD scores (higher = more OOD); NaN is an error (raise it before: :func:`check_finite`).
        threshold: the saved threshold.
        rule: the no-tag rule (``"ood"``, ``"fallback"`` or None).
    Returns:
        ``(N,)`` booleans, True = OOD.
    """
    s = np.asarray(scores, dtype=np.float64)
    return (s > threshold) | _no_tag(s, rule)


def check_finite(method: str, scores: np.ndarray, what: str, cause: str = "") -> None:
    """Raise :class:`NaNScoreError` naming the method and how many of the scores are NaN (``cause``: why)."""
    nan = np.isnan(np.asarray(scores, dtype=np.float64))
    if nan.any():
        raise NaNScoreError(f"{method} gave NaN scores for {int(nan.sum())} of {len(nan)} {what}; a NaN score cannot be "
                            f"judged in- or out-of-distribution.{' ' + cause if cause else ''}")


def decision_threshold(method: str, held: np.ndarray, rule: str | None, target: float = TARGET_TPR) -> dict[str, Any]:
    """Threshold from held-out IND scores (higher = more OOD).

    Args:
        method: the method spec (for messages).
        held: the held-out IND images' scores.
        rule: the no-tag rule; under ``"ood"`` no-tag images count as rejected.
        target: the IND true-positive rate to reach.
    Returns:
        ``threshold`` (the smallest held-out score that accepts at least ``target`` of them; when that cannot be
        reached, the largest tagged score: every tagged image accepted), ``heldout_tpr`` (the fraction of held-out
        IND images accepted), ``heldout_no_tag_fraction`` and ``degenerate`` (``target`` not reached).
    Raises:
        NaNScoreError: a held-out score is NaN.
        tagood.errors.InputError: no held-out image kept an IND tag.
    """
    s = np.asarray(held, dtype=np.float64)
    check_finite(method, s, "held-out IND images")
    no_tag = _no_tag(s, rule)
    tagged = np.sort(s[~no_tag])
    if not len(tagged):
        raise InputError(f"{method}: none of the {len(s)} held-out IND images kept an IND tag, so no threshold can be "
                         f"set; use a lower tag threshold or a vocabulary with more tags per class")
    need = int(np.ceil(target * len(s) - 1e-9))  # images to accept
    degenerate = need > len(tagged)
    thr = float(tagged[-1] if degenerate else tagged[max(need, 1) - 1])
    tpr = float(np.mean(~is_ood(s, thr, rule)))
    return {"threshold": thr, "heldout_tpr": tpr, "heldout_no_tag_fraction": float(no_tag.mean()), "degenerate": degenerate}


def degenerate_warning(method: str, dec: dict[str, Any]) -> str:
    """The warning of a threshold that cannot reach the target TPR (too many held-out images without a tag)."""
    return (f"{method}: {100 * dec['heldout_no_tag_fraction']:.1f}% of the held-out IND images have no kept IND tag "
            f"(no_tag=ood flags them), so the threshold cannot accept {100 * TARGET_TPR:.0f}% of IND: it accepts every "
            f"tagged held-out image and reaches a TPR of {100 * dec['heldout_tpr']:.1f}%. A lower tag threshold, a "
            f"vocabulary with more tags per class, or [no_tag=fallback] avoids this.")


def nan_cause(det: Any, fs: Any, rows: np.ndarray) -> str:
    """Why a detector scored NaN on rows ``rows`` of ``fs``: a diverged training, NaN in the detector's state, or
    NaN in the extracted features of those images."""
    hist = getattr(det, "history", None) or []
    bad = next((h for h in hist if not np.isfinite(h.get("loss", 0.0))), None)
    if bad is not None:
        return (f"Cause: the training diverged (loss {bad['loss']} at epoch {bad.get('epoch', '?')}); "
                f"fit again with a lower learning rate (the lr option, e.g. tagood[lr=1e-4]) or fewer epochs.")
    state = _state_arrays(det)
    broken = sorted(k for k, a in state.items() if not np.isfinite(a).all())
    if broken:
        return (f"Cause: the detector's parameters ({', '.join(broken[:4])}{' ...' if len(broken) > 4 else ''}) hold "
                "NaN/inf; fit it again.")
    part = fs.subset(np.sort(rows))
    for name in ("tokens", "features", "tag_probs", "tag_attention", "block_norms", "logits", "image_embeds"):
        v = getattr(part, name, None)
        arr = getattr(v, "values", getattr(v, "maps", v))
        if arr is not None and not np.isfinite(np.asarray(arr, dtype=np.float32)).all():
            return (f"Cause: the extracted {name} of these images hold NaN/inf (a damaged feature cache?); delete the cache "
                    f"entry and extract again. First: {(part.paths or ['?'])[0]}")
    return f"The detector's inputs are finite; first image: {(part.paths or ['?'])[0]}."


def _state_arrays(det: Any) -> dict[str, np.ndarray]:
    """The detector's fitted floating-point arrays by name (its saved state where it declares one)."""
    try:
        arrays, _ = det._state()
    except Exception:  # noqa: BLE001 - only a diagnosis: a detector without a declared state has none to show
        arrays = {}
    out = {k: np.asarray(v) for k, v in arrays.items() if np.asarray(v).dtype.kind == "f"}
    model = getattr(det, "model", None)
    if not out and model is not None and hasattr(model, "state_dict"):
        out = {f"model.{k}": v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    return out
