"""Extraction pipeline: image source -> backbone -> feature cache, resumable and streaming.

Decoding and preprocessing run in a thread pool one batch ahead of the model forward, so the model is rarely
idle. A sample that cannot be decoded is skipped, recorded in the cache manifest (``failed``) and reported; it
never aborts a run, but a source whose every image fails, or a labelled source that loses every image of a
class, is an error. An interrupted extraction resumes after its last committed shard; a finished one does no
work. Each source file's ``[size, mtime_ns]`` is stored with its shard: a later call re-extracts only the
shards whose files changed or that fail their checksum. The entry's write lock
(:class:`tagood.cache.EntryLock`) is held throughout.

Modules: :mod:`~tagood.extract.split` (the entry point, :func:`extract_split`), :mod:`~tagood.extract.pipeline`
(decode, forward and write one range of samples), :mod:`~tagood.extract.local` (one process: extract, resume,
repair), :mod:`~tagood.extract.torchrun` (every rank of a torchrun world its own part, then the merge of the
parts) and :mod:`~tagood.extract.images` (the images of a cache entry's samples, for ODIN).
"""

from __future__ import annotations

from tagood.extract.images import entry_images
from tagood.extract.split import extract_split

__all__ = ["entry_images", "extract_split"]
