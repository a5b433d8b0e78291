"""The saved-detector format: a folder with ``config.json``, ``weights.safetensors`` and ``manifest.json``.

``config.json`` (validated by :class:`SavedConfig` when read) holds the format and its version, the detector's
registered name and spec, its options, its fitted scalars and small metadata (``state``), a list of the arrays
with their dtype and shape, and the tagood version that wrote it. ``weights.safetensors`` holds every fitted
array in the dtype it was fitted in, so a loaded detector scores bit-identically. No pickle anywhere.

``manifest.json`` (:class:`Manifest`, written last) proves the folder is intact: the SHA-256 and size of every
file of the detector (``tagood fit`` adds its ``tagood.json`` and ``head.safetensors``), a fingerprint of the
training split it was fitted on (:func:`fingerprint`: size, classes, hashes of the labels and features; a
training-free detector such as MSP, whose state does not depend on the features, records their shapes only), the
detector, spec and options, and the versions of tagood and its libraries that wrote it. :func:`verify` checks it
on every load (:func:`tagood.detectors.load`, ``tagood score``): an edited, damaged, truncated or swapped file
(weights from another fit with the same shapes, weights cast to float16, a hand-edited value) is refused with one
message naming the file. A folder without ``manifest.json`` (saved before tagood had one, or with it removed) is
refused too: fit and save the detector again.

:meth:`tagood.detectors.base.Detector.save` and :func:`tagood.detectors.base.load` use :func:`write`,
:func:`read` and :func:`verify`; a detector supplies its state through ``_state`` / ``_set_state``. A torch
module's weights are arrays too (:func:`module_arrays` / :func:`module_state`). Every file is read only if it is a
regular file (a FIFO or device in its place is refused, never waited on).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import ValidationError

from tagood._version import __version__
from tagood.core.validation import NonNegInt, _Strict, format_errors
from tagood.detectors.manifest import _FP_FIELDS as FP_FIELDS
from tagood.detectors.manifest import MANIFEST, fingerprint, read_json_object, seal, verify, write_manifest
from tagood.errors import CheckpointError
from tagood.runtime.fileio import (
    NotRegularFileError,
    atomic_write_json,
    atomic_write_with,
    open_regular,
)

if TYPE_CHECKING:
    import torch

__all__ = ["CONFIG", "FORMAT", "FORMAT_VERSION", "FP_FIELDS", "MANIFEST", "WEIGHTS", "SavedConfig", "fingerprint",
           "module_arrays", "module_state", "read", "seal", "verify", "write"]

FORMAT = "tagood-detector"
FORMAT_VERSION = 2
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
#: the files ``tagood fit`` adds beside a saved detector (:mod:`tagood.pipeline.detector_dir`)
EXTRA_FILES = ("head.safetensors", "tagood.json")
_FIX = "save the detector again with det.save(directory)"


class ArrayInfo(_Strict):
    dtype: str
    shape: list[NonNegInt]


class SavedConfig(_Strict):
    """The schema of a saved detector's ``config.json``."""

    format: Literal["tagood-detector"]
    format_version: Literal[2]
    detector: str
    spec: str
    options: dict[str, Any]
    state: dict[str, Any]
    arrays: dict[str, ArrayInfo]
    tagood_version: str


def _plain(v: Any) -> Any:
    """Metadata as plain JSON values (numpy scalars and arrays become Python numbers and lists; floats stay exact)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"saved-detector metadata must be JSON numbers, text, lists or tables, not {type(v).__name__}")


def write(directory: str | Path, detector: str, spec: str, options: Mapping[str, Any], state: Mapping[str, Any],
          arrays: Mapping[str, np.ndarray], fitted_on: Mapping[str, Any] | None = None) -> Path:
    """Write ``directory/weights.safetensors`` (``arrays``), then ``directory/config.json``, then
    ``directory/manifest.json`` (the files' hashes, ``fitted_on``, versions), each atomically. The manifest and the
    files ``tagood fit`` adds (``head.safetensors``, ``tagood.json``) of a detector saved in ``directory`` before
    are removed first, so the folder never pairs the new detector with an old threshold.

    Args:
        directory: the folder (created if needed).
        detector: the registered name; ``spec``: the method spec; ``options``: the options, JSON values.
        state: fitted scalars and small metadata, JSON values (numpy scalars are converted exactly).
        arrays: name -> array, written in its dtype and shape.
        fitted_on: the training split's :func:`fingerprint` (None: not known, e.g. a training-free detector).
    Returns:
        The folder.
    Raises:
        tagood.runtime.fileio.OutputPathError: ``directory`` is a file, a device or a FIFO.
    """
    from safetensors.numpy import save_file

    from tagood.runtime.fileio import check_output_dir

    d = Path(directory)
    check_output_dir(d)
    d.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST, *EXTRA_FILES):  # a detector saved here before: its manifest and `tagood fit` files go first
        (d / stale).unlink(missing_ok=True)
    tensors = {str(k): np.ascontiguousarray(v) for k, v in arrays.items()}
    for k, v in tensors.items():
        if v.dtype.kind not in "biuf":
            raise TypeError(f"saved-detector array '{k}' has dtype {v.dtype}; only numbers and booleans can be saved")
    atomic_write_with(d / WEIGHTS, lambda tmp: save_file(tensors, str(tmp)))
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "detector": detector, "spec": spec,
           "options": _plain(dict(options)), "state": _plain(dict(state)),
           "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in tensors.items()},
           "tagood_version": __version__}
    atomic_write_json(d / CONFIG, cfg)
    write_manifest(d, [WEIGHTS, CONFIG], detector=detector, spec=spec, options=cfg["options"], fitted_on=fitted_on)
    return d


def read(directory: str | Path) -> tuple[SavedConfig, dict[str, np.ndarray], str]:
    """The validated ``config.json``, the arrays of ``weights.safetensors`` and the config's path (for messages).

    The files' contents are checked here; that they are the files that were saved is :func:`verify`'s check
    (:func:`tagood.detectors.load` runs both before the detector's state is restored).

    Raises:
        tagood.errors.CheckpointError: a file is missing, not a regular file, unreadable, not JSON / safetensors,
            does not follow the schema, or the arrays differ from those ``config.json`` lists; the message names
            the file.
    """
    from safetensors.numpy import load_file

    d = Path(directory)
    cfg_path, w_path = d / CONFIG, d / WEIGHTS
    if not d.is_dir():
        raise CheckpointError(f"{d}: no such folder; pass the folder written by det.save(directory)")
    for p in (cfg_path, w_path):
        if not p.exists():
            raise CheckpointError(f"{p} not found: {d} holds no saved detector; pass the folder written by det.save(directory)")
    data = read_json_object(cfg_path, _FIX)
    try:
        cfg = SavedConfig.model_validate(data)
    except ValidationError as e:
        raise CheckpointError(format_errors(e, data, str(cfg_path),
                                            f"It is not a detector saved by det.save(); {_FIX}")) from None
    try:
        with open_regular(w_path):  # a FIFO or device is refused here, before safetensors would wait on it
            pass
    except NotRegularFileError as e:
        raise CheckpointError(f"{e}; {_FIX}") from None
    except OSError as e:
        raise CheckpointError(f"{w_path} cannot be read ({e.strerror})") from None
    try:
        arrays = load_file(str(w_path))
    except Exception:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise CheckpointError(f"{w_path} is damaged or not a safetensors file; {_FIX}") from None
    if set(arrays) != set(cfg.arrays):
        missing, extra = sorted(set(cfg.arrays) - set(arrays)), sorted(set(arrays) - set(cfg.arrays))
        raise CheckpointError(f"{w_path} does not match {cfg_path}: missing arrays {missing}, unlisted arrays {extra}; {_FIX}")
    for k, info in cfg.arrays.items():
        a = arrays[k]
        if str(a.dtype) != info.dtype or list(a.shape) != info.shape:
            raise CheckpointError(f"{w_path}: array '{k}' is {a.dtype} {list(a.shape)}, {cfg_path} lists {info.dtype} "
                                  f"{info.shape}; {_FIX}")
    return cfg, arrays, str(cfg_path)


def module_arrays(prefix: str, module: torch.nn.Module) -> dict[str, np.ndarray]:
    """A torch module's ``state_dict`` as arrays named ``prefix.<key>`` (bit-exact; bfloat16 is not supported)."""
    return {f"{prefix}.{k}": v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def module_state(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` written by :func:`module_arrays` under ``prefix``, for ``module.load_state_dict``."""
    import torch

    n = len(prefix) + 1
    return {k[n:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(prefix + ".")}
