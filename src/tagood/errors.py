"""The exceptions of tagood: one base, :class:`TagoodError`, and one subclass per kind of problem.

Every error a user can cause -- a bad option, config or path, an unreadable image folder, a damaged cache entry or
saved detector, a checkpoint that does not match its model -- is a :class:`TagoodError`. Its message names the file
or the option and says what to do. The ``tagood`` command prints such an error as one line and exits with status 2;
anything else is a bug and is reported with a pointer to ``tagood --debug``.

Example:
    >>> import tagood
    >>> try:
    ...     tagood.create("knn[k=0]")
    ... except tagood.TagoodError as e:
    ...     print(type(e).__name__)
    OptionError
"""

from __future__ import annotations

__all__ = ["CacheError", "CheckpointError", "ConfigError", "InputError", "MissingDependencyError", "TagoodError"]


class TagoodError(Exception):
    """Base of every error a user can cause; the ``tagood`` command maps it to one line and exit status 2."""


class ConfigError(TagoodError, ValueError):
    """A setting is invalid: a benchmark config, a detector option, a method spec. The message names the key."""


class MissingDependencyError(ConfigError):
    """An optional Python package that a requested feature needs is not installed (or cannot be imported); the
    message names the package and the ``pip install 'tagood[EXTRA]'`` that adds it."""


class InputError(TagoodError, ValueError):
    """Input data is unusable: a missing or empty image folder, an undecodable image, a bad list file."""


class CacheError(TagoodError):
    """A feature-cache entry is unusable (corrupt manifest, missing shard, key mismatch, lock problem)."""


class CheckpointError(TagoodError):
    """Model weights or a saved detector are missing, unreadable, damaged or do not match what reads them."""
