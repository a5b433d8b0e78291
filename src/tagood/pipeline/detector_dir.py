"""The folder ``tagood fit`` writes and ``tagood score`` reads: the detector in the one saved format
(``config.json`` + ``weights.safetensors``, :meth:`tagood.detectors.Detector.save`), the IND linear head when scoring
goes through it (``head.safetensors``: logit methods, ODIN), ``tagood.json`` (:class:`tagood.pipeline.meta.DetectorMeta`:
the threshold, the backbone record, the no-tag rule), and ``manifest.json`` (:mod:`tagood.detectors.manifest`: the
hashes of all of them), completed last. No pickle anywhere; every file is read only if it is a regular file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tagood.core.types import LinearHead
from tagood.detectors.manifest import add_files, verify
from tagood.errors import CheckpointError
from tagood.runtime.fileio import (
    NotRegularFileError,
    atomic_write_text,
    atomic_write_with,
    open_regular,
    read_regular_bytes,
)

#: the file of the decision (threshold, backbone, no-tag rule) beside the detector's own files
META_FILE = "tagood.json"
#: the IND linear head's file, when the detector scores through it
HEAD_FILE = "head.safetensors"


class DetectorFileError(CheckpointError):
    """A saved detector directory is missing, unreadable or damaged; the message names the file (never its
    contents) and says what to do."""


def check_detector_dir(detector_dir: str | Path) -> dict[str, Any]:
    """Check a directory written by ``tagood fit`` before anything in it is loaded, and return its ``tagood.json``.

    The JSON is read and validated against :class:`tagood.pipeline.meta.DetectorMeta` (a finite ``threshold`` --
    scores are higher = more OOD, ``score > threshold`` is OOD -- the backbone record, the no-tag rule, ...),
    every ``.safetensors`` file's header is parsed, and then every file is checked against ``manifest.json``
    (:func:`tagood.detectors.manifest.verify`: an edited threshold, a flipped byte, weights from another fit are
    refused). The CLI (``tagood score``) and library callers share this check.

    Args:
        detector_dir: the folder written by :func:`tagood.pipeline.fitscore.fit_folder`.
    Returns:
        The ``tagood.json`` document.
    Raises:
        DetectorFileError: naming the file.
    """
    from safetensors import safe_open

    from tagood.core.validation import SchemaError
    from tagood.pipeline.meta import validate_detector_meta

    d = Path(detector_dir)
    meta_path = d / META_FILE
    if not d.is_dir():
        raise DetectorFileError(f"{d} is not a directory written by `tagood fit`")
    if not os.path.lexists(meta_path):
        raise DetectorFileError(f"{d} is not a detector saved by `tagood fit` (no {META_FILE})")
    try:
        meta = json.loads(read_regular_bytes(meta_path).decode("utf-8"))
    except NotRegularFileError as e:
        raise DetectorFileError(f"{e}; re-run `tagood fit` to save the detector again") from None
    except (OSError, UnicodeDecodeError, ValueError):
        raise DetectorFileError(f"{meta_path} is not valid JSON; re-run `tagood fit` to save the detector again") from None
    try:
        validate_detector_meta(meta, meta_path)
    except SchemaError as e:
        raise DetectorFileError(str(e)) from None
    for f in sorted(d.glob("*.safetensors")):
        try:
            with open_regular(f):  # a FIFO or device is refused before safetensors would wait on it
                pass
            with safe_open(str(f), framework="numpy") as st:
                st.keys()
        except NotRegularFileError as e:
            raise DetectorFileError(f"{e}; re-run `tagood fit` to save the detector again") from None
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise DetectorFileError(f"{f} is damaged or not a safetensors file ({type(e).__name__}); re-run `tagood fit` to "
                                    "save the detector again") from None
    if meta.get("head") and not (d / HEAD_FILE).is_file():
        raise DetectorFileError(f"{d / HEAD_FILE} is missing (its {META_FILE} says the detector scores through the IND "
                                "head); re-run `tagood fit` to save the detector again")
    try:
        verify(d)
    except CheckpointError as e:
        raise DetectorFileError(str(e)) from None
    return dict(meta)


def write_head(directory: str | Path, head: LinearHead) -> Path:
    """Write the IND linear head (weight ``(C, D)``, bias ``(C,)``, in their dtype) to ``directory/head.safetensors``."""
    from safetensors.numpy import save_file

    path = Path(directory) / HEAD_FILE
    arrays = {"weight": np.ascontiguousarray(head.weight), "bias": np.ascontiguousarray(head.bias)}
    atomic_write_with(path, lambda tmp: save_file(arrays, str(tmp)))
    return path


def read_head(directory: str | Path, classes: list[str]) -> LinearHead:
    """The IND linear head saved by :func:`write_head`, checked against the saved classes.

    Raises:
        DetectorFileError: the file is damaged or its shapes do not fit ``classes``.
    """
    from safetensors.numpy import load_file

    path = Path(directory) / HEAD_FILE
    try:
        with open_regular(path):
            pass
        arrays = load_file(str(path))
    except NotRegularFileError as e:
        raise DetectorFileError(f"{e}; re-run `tagood fit` to save the detector again") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise DetectorFileError(f"{path} is damaged or not a safetensors file ({type(e).__name__}); re-run `tagood fit` to "
                                "save the detector again") from None
    w, b = arrays.get("weight"), arrays.get("bias")
    if w is None or b is None or w.ndim != 2 or b.shape != (w.shape[0],) or w.shape[0] != len(classes):
        raise DetectorFileError(f"{path} does not hold an IND head (weight (C, D), bias (C,)) of the {len(classes)} saved "
                                "classes; re-run `tagood fit` to save the detector again")
    return LinearHead(w, b, list(classes))


def write_meta(directory: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``tagood.json``, then add it and the IND head (when written) to the manifest ``det.save`` wrote (last:
    a folder whose manifest covers its ``tagood.json`` is complete)."""
    d = Path(directory)
    path = d / META_FILE
    atomic_write_text(path, json.dumps(meta, indent=1))
    add_files(d, [HEAD_FILE, META_FILE] if meta.get("head") and (d / HEAD_FILE).is_file() else [META_FILE])
    return path
