"""The saved-detector format: a folder with ``config.json`` and ``weights.safetensors``.

``config.json`` (validated by :class:`SavedConfig` when read) holds the format and its version, the detector's
registered name and spec, its options, its fitted scalars and small metadata (``state``), a list of the arrays
with their dtype and shape, and the tagood version that wrote it. ``weights.safetensors`` holds every fitted
array in the dtype it was fitted in, so a loaded detector scores bit-identically. No pickle anywhere.

:meth:`tagood.detectors.base.Detector.save` and :func:`tagood.detectors.base.load` use :func:`write` and
:func:`read`; a detector supplies its state through ``_state`` / ``_set_state``. A torch module's weights are
arrays too (:func:`module_arrays` / :func:`module_state`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import ValidationError

from tagood._version import __version__
from tagood.core.validation import NonNegInt, _Strict, format_errors
from tagood.errors import CheckpointError
from tagood.runtime.fileio import atomic_write_json, atomic_write_with

if TYPE_CHECKING:
    import torch

__all__ = ["CONFIG", "FORMAT", "FORMAT_VERSION", "WEIGHTS", "SavedConfig", "module_arrays", "module_state", "read", "write"]

FORMAT = "tagood-detector"
FORMAT_VERSION = 2
CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
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
          arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``directory/weights.safetensors`` (``arrays``) and then ``directory/config.json``, each atomically.

    Args:
        directory: the folder (created if needed).
        detector: the registered name; ``spec``: the method spec; ``options``: the options, JSON values.
        state: fitted scalars and small metadata, JSON values (numpy scalars are converted exactly).
        arrays: name -> array, written in its dtype and shape.
    Returns:
        The folder.
    """
    from safetensors.numpy import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
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
    return d


def read(directory: str | Path) -> tuple[SavedConfig, dict[str, np.ndarray], str]:
    """The validated ``config.json``, the arrays of ``weights.safetensors`` and the config's path (for messages).

    Raises:
        tagood.errors.CheckpointError: a file is missing, unreadable, not JSON / safetensors, does not follow the
            schema, or the arrays differ from those ``config.json`` lists; the message names the file.
    """
    from safetensors.numpy import load_file

    d = Path(directory)
    cfg_path, w_path = d / CONFIG, d / WEIGHTS
    if not d.is_dir():
        raise CheckpointError(f"{d}: no such folder; pass the folder written by det.save(directory)")
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise CheckpointError(f"{p} not found: {d} holds no saved detector; pass the folder written by det.save(directory)")
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CheckpointError(f"{cfg_path} is not a UTF-8 text file; {_FIX}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON (line {e.lineno}); {_FIX}") from None
    except OSError as e:
        raise CheckpointError(f"{cfg_path} cannot be read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{cfg_path} is not a JSON object; {_FIX}")
    try:
        cfg = SavedConfig.model_validate(data)
    except ValidationError as e:
        raise CheckpointError(format_errors(e, data, str(cfg_path),
                                            f"It is not a detector saved by det.save(); {_FIX}")) from None
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
