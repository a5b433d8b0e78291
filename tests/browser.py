"""The headless browser the page tests open (results.html, the docs site): Debian's chromium or another Chrome."""

from __future__ import annotations

import shutil


def find_browser() -> str | None:
    """The path of a Chromium-family browser on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None
