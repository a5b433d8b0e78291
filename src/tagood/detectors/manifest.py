"""``manifest.json``: the proof that a saved detector folder holds the files that were saved, unchanged.

Written last by :func:`tagood.detectors.persist.write` (``det.save``) and extended by ``tagood fit``
(:func:`add_files`: its ``tagood.json`` and ``head.safetensors``), it records

* ``files``: the SHA-256 and size of every file of the detector (``config.json``, ``weights.safetensors``, and
  for ``tagood fit`` folders ``head.safetensors`` and ``tagood.json``);
* ``fitted_on``: a fingerprint of the IND training split (:func:`fingerprint`: its size, classes, the fields it
  held and hashes of its labels, features and sample ids);
* the detector, spec and options, and the versions of tagood, Python, numpy, torch and safetensors that wrote it;
* ``manifest_sha256``: a hash of all of the above, so a hand edit of the manifest itself is caught.

:func:`verify` runs on every load (:func:`tagood.detectors.load`, ``tagood score``). One message names the first
file that is missing, changed (edited, damaged, truncated, cast to another dtype, copied from another fit), added
after the save, or not a regular file, and says what to do: fit and save the detector again. A folder without a
manifest (saved before tagood wrote one, or with the file removed) is refused the same way, since nothing else
could tell an intact folder from a tampered one. :func:`seal` writes a manifest for a folder as it is now, for
someone who edited a detector on purpose and vouches for the result.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import logging
import os
import platform
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationError

from tagood._version import __version__
from tagood.core.validation import NonNegInt, _Strict, format_errors
from tagood.errors import CheckpointError
from tagood.runtime.fileio import NotRegularFileError, atomic_write_json, read_regular_bytes, sha256_file

__all__ = ["KNOWN_FILES", "MANIFEST", "Manifest", "add_files", "fingerprint", "read_manifest", "seal", "verify",
           "write_manifest"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: the files of a saved detector a manifest can cover (``det.save``'s two, then those ``tagood fit`` adds)
KNOWN_FILES = ("config.json", "weights.safetensors", "head.safetensors", "tagood.json")
_FIX = "fit the detector again and save it (`tagood fit`, or det.fit(...).save(directory))"
#: fields of a training split whose shapes the fingerprint records; the first one held is hashed
_FP_FIELDS = ("features", "logits", "tag_probs", "block_norms", "image_embeds")


class FileRecord(_Strict):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    bytes: NonNegInt


class Manifest(_Strict):
    """The schema of ``manifest.json``."""

    format: Literal["tagood-manifest"]
    format_version: Literal[1]
    detector: str | None
    spec: str | None
    options: dict[str, Any] | None
    fitted_on: dict[str, Any] | None
    tagood_version: str
    versions: dict[str, str]
    files: dict[Literal["config.json", "weights.safetensors", "head.safetensors", "tagood.json"], FileRecord]
    manifest_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def _versions() -> dict[str, str]:
    out = {"tagood": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "torch", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _self_hash(doc: Mapping[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


#: (device, inode, size, mtime, ctime) -> sha256 of files hashed by this process: a folder checked by
#: ``tagood score`` and then loaded is read once, and any change to a file changes its key
_HASHED: dict[tuple[int, int, int, int, int], str] = {}


def _hash(path: Path) -> tuple[str, int]:
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _HASHED:
        return _HASHED[key], st.st_size
    digest, size = sha256_file(path)
    if len(_HASHED) > 256:
        _HASHED.clear()
    _HASHED[key] = digest
    return digest, size


def _records(d: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in names:
        digest, size = _hash(d / name)
        out[name] = {"sha256": digest, "bytes": size}
    return out


def _write(d: Path, doc: dict[str, Any]) -> Path:
    doc["manifest_sha256"] = _self_hash(doc)
    path = d / MANIFEST
    atomic_write_json(path, doc)
    return path


def write_manifest(directory: str | Path, files: Sequence[str], *, detector: str | None, spec: str | None,
                   options: Mapping[str, Any] | None, fitted_on: Mapping[str, Any] | None) -> Path:
    """Write ``directory/manifest.json`` for ``files`` (names in :data:`KNOWN_FILES`), hashing them as they are now.

    Args:
        directory: the saved detector's folder.
        files: the files to cover.
        detector: the registered name; ``spec``: the method spec; ``options``: its options (JSON values).
        fitted_on: the training split's :func:`fingerprint`, or None.
    Returns:
        The manifest's path.
    """
    d = Path(directory)
    doc: dict[str, Any] = {"format": "tagood-manifest", "format_version": 1, "detector": detector, "spec": spec,
                           "options": dict(options) if options is not None else None,
                           "fitted_on": dict(fitted_on) if fitted_on is not None else None,
                           "tagood_version": __version__, "versions": _versions(), "files": _records(d, files)}
    return _write(d, doc)


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """The JSON object in the saved detector file ``path`` (read without blocking: a FIFO is refused at once).

    Raises:
        tagood.errors.CheckpointError: not a regular file, not UTF-8, not JSON, not an object, or unreadable; the
            message names the file and ends with ``fix`` (what to do).
    """
    try:
        data = json.loads(read_regular_bytes(path).decode("utf-8"))
    except NotRegularFileError as e:
        raise CheckpointError(f"{e}; {fix}") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not a UTF-8 text file; {fix}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON (line {e.lineno}); {fix}") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; {fix}")
    return data


def read_manifest(directory: str | Path) -> Manifest:
    """The validated ``manifest.json`` of a saved detector (its own hash checked; the files are not: :func:`verify`).

    Raises:
        tagood.errors.CheckpointError: no manifest, not a regular file, not JSON, off the schema, or edited.
    """
    d = Path(directory)
    path = d / MANIFEST
    if not os.path.lexists(path):
        raise CheckpointError(f"{path} not found: the files of {d} cannot be checked (it was saved by a tagood without "
                              f"manifests, or the manifest was removed), so it is not loaded; {_FIX}")
    data = read_json_object(path, _FIX)
    try:
        man = Manifest.model_validate(data)
    except ValidationError as e:
        raise CheckpointError(format_errors(e, data, str(path), f"It is not a tagood detector manifest; {_FIX}")) from None
    if _self_hash(data) != man.manifest_sha256:
        raise CheckpointError(f"{path} was edited or damaged after it was written (its own hash does not match); {_FIX}")
    return man


def verify(directory: str | Path) -> Manifest:
    """Check that the saved detector in ``directory`` holds exactly the files its manifest records, unchanged.

    Every file the manifest lists must be a regular file with the recorded size and SHA-256, and every file of
    :data:`KNOWN_FILES` present in the folder must be listed (a ``tagood.json`` or head added by hand is caught).

    Args:
        directory: a folder written by ``det.save`` or ``tagood fit``.
    Returns:
        The manifest (its ``fitted_on`` fingerprint and versions).
    Raises:
        tagood.errors.CheckpointError: one message naming the first file that is missing, changed, unlisted or not
            a regular file, and what to do (fit and save the detector again).
    """
    d = Path(directory)
    man = read_manifest(d)
    where = d / MANIFEST
    for name in KNOWN_FILES:
        if os.path.lexists(d / name) and name not in man.files:
            raise CheckpointError(f"{d / name} is not recorded in {where}: it was added or replaced after the detector "
                                  f"was saved; {_FIX}")
    for name, rec in man.files.items():
        p = d / name
        if not os.path.lexists(p):
            raise CheckpointError(f"{p} is missing ({where} records it); {_FIX}")
        try:
            digest, size = _hash(p)
        except NotRegularFileError as e:
            raise CheckpointError(f"{e}; {_FIX}") from None
        except OSError as e:
            raise CheckpointError(f"{p} cannot be read ({e.strerror})") from None
        if size != rec.bytes or digest != rec.sha256:
            how = f"{size} bytes, {rec.bytes} when saved" if size != rec.bytes else "same size, other bytes"
            raise CheckpointError(f"{p} changed since the detector was saved ({how}; its SHA-256 differs from the one "
                                  f"{where} records): it was edited, damaged or copied from another fit; {_FIX}")
    if man.tagood_version != __version__:
        log.info("%s was saved by tagood %s (this is %s)", d, man.tagood_version, __version__)
    return man


def add_files(directory: str | Path, files: Sequence[str]) -> Path:
    """Add ``files`` (hashed now) to the manifest ``det.save`` wrote; the records already there are kept as they
    are, so a file changed in between is still caught. ``tagood fit`` adds ``head.safetensors`` and ``tagood.json``.

    Raises:
        tagood.errors.CheckpointError: the folder has no valid manifest.
    """
    d = Path(directory)
    doc = read_manifest(d).model_dump(mode="json")
    doc["files"].update(_records(d, files))
    return _write(d, doc)


def seal(directory: str | Path) -> Path:
    """Write a manifest for a saved detector folder as it is now: every file of :data:`KNOWN_FILES` present is
    hashed, the detector, spec and options come from its ``config.json`` and the fingerprint from an old manifest
    (when readable).

    Only for a folder whose files you vouch for (a detector you edited on purpose, or one saved before tagood
    wrote manifests): :func:`verify` then accepts it.

    Returns:
        The manifest's path.
    """
    d = Path(directory)
    try:
        cfg = json.loads(read_regular_bytes(d / "config.json"))
    except (OSError, ValueError):
        cfg = {}
    try:
        fitted_on = read_manifest(d).fitted_on
    except CheckpointError:
        fitted_on = None
    cfg = cfg if isinstance(cfg, dict) else {}
    names = [n for n in KNOWN_FILES if (d / n).is_file()]
    return write_manifest(d, names, detector=cfg.get("detector"), spec=cfg.get("spec"), options=cfg.get("options"),
                          fitted_on=fitted_on)


#: id(array) -> (a weak reference to it, its sha256): the benchmark fits many detectors on one training split,
#: whose arrays are hashed once; an entry only counts while its array is alive (a new array at the same address
#: is hashed anew)
_FP_MEMO: dict[int, tuple[weakref.ref[np.ndarray], str]] = {}


def _array_sha256(a: np.ndarray, rows: int = 65536) -> str:
    hit = _FP_MEMO.get(id(a))
    if hit is not None and hit[0]() is a:
        return hit[1]
    h = hashlib.sha256()
    for i in range(0, max(len(a), 1), rows):
        h.update(np.ascontiguousarray(a[i:i + rows]).data)
    digest = h.hexdigest()
    for k in [k for k, (ref, _) in _FP_MEMO.items() if ref() is None]:
        del _FP_MEMO[k]
    try:
        _FP_MEMO[id(a)] = (weakref.ref(a), digest)
    except TypeError:  # an array type without weak references: not remembered
        pass
    return digest


def fingerprint(train: Any, classes: Sequence[str] | None = None) -> dict[str, Any]:
    """What a detector was fitted on, in a few numbers and hashes (recorded as ``fitted_on`` in the manifest).

    Args:
        train: the IND training :class:`tagood.FeatureSet` given to ``fit``.
        classes: the IND class names, when known (``Context.class_names``).
    Returns:
        ``n`` (samples), ``n_classes`` and ``labels_sha256`` (with labels), ``classes``, ``fields`` (dtype and
        shape of each dense field held), ``hashed`` and ``sha256`` (the first of features, logits, tag_probs,
        block_norms, image_embeds held, hashed in full), ``paths_sha256`` (sample ids), ``streamed`` (fields
        streamed from the cache, not hashed).
    """
    out: dict[str, Any] = {"n": int(len(train))}
    labels = getattr(train, "labels", None)
    if labels is not None:
        lab = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
        out["n_classes"] = int(len(np.unique(lab[lab >= 0])))
        out["labels_sha256"] = hashlib.sha256(lab.data).hexdigest()
    if classes is not None:
        out["classes"] = [str(c) for c in classes]
    fields = {}
    for name in _FP_FIELDS:
        v = getattr(train, name, None)
        if isinstance(v, np.ndarray):
            fields[name] = {"dtype": str(v.dtype), "shape": [int(x) for x in v.shape]}
    out["fields"] = fields
    if fields:
        first = next(iter(fields))
        out["hashed"] = first
        out["sha256"] = _array_sha256(getattr(train, first))
    paths = getattr(train, "paths", None)
    if paths is not None:
        out["paths_sha256"] = hashlib.sha256("\n".join(str(p) for p in paths).encode()).hexdigest()
    streamed = sorted(getattr(train, "streamed", None) or ())
    if streamed:
        out["streamed"] = streamed
    return out
