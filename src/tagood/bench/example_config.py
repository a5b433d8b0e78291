"""The annotated example benchmark config (``tagood bench --example-config``).

The file ships inside the package (``tagood/assets/bench-example.toml``); it lists every key of a
benchmark config (:func:`tagood.bench.config.load_config`, checked by :mod:`tagood.bench.schema`) and
every split type, and it loads as it is (a test keeps it valid and complete).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: Package-relative location of the example config.
EXAMPLE_RESOURCE = ("tagood", "assets/bench-example.toml")


def example_config_path() -> Path:
    """The example config's path inside the installed package."""
    return Path(str(resources.files(EXAMPLE_RESOURCE[0]).joinpath(EXAMPLE_RESOURCE[1])))


def example_config_text() -> str:
    """The annotated example config as text."""
    return example_config_path().read_text(encoding="utf-8")
