"""Packaged data files.

* ``imagenet_classes.txt``: 1000 short human-readable ImageNet-1K class names in the standard label
  order (from the imagenet-simple-labels project, MIT licence).
* ``imagenet_wnids.txt``: the 1000 WordNet ids in the same order; ``imagenet_synsets.tsv``: wnid and
  WordNet synonyms (ILSVRC ``LOC_synset_mapping.txt``).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources


def read_lines(name: str) -> list[str]:
    """Non-empty lines of a packaged text asset."""
    text = resources.files("tagood.assets").joinpath(name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


@lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1K class names, index order."""
    return read_lines("imagenet_classes.txt")


@lru_cache(maxsize=1)
def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1K WordNet ids (n01440764, ...), index order."""
    return read_lines("imagenet_wnids.txt")


@lru_cache(maxsize=1)
def imagenet_synonyms() -> list[list[str]]:
    """WordNet synonyms of each ImageNet-1K class, index order."""
    return [line.split("\t", 1)[1].split(", ") for line in read_lines("imagenet_synsets.tsv")]
