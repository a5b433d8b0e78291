"""This process's resident memory, for per-stage peak figures (``tagood bench`` records them per rank).

:func:`reset_peak` clears the kernel's high-water mark of the resident set (``VmHWM``, by writing ``5`` to
``/proc/self/clear_refs``, Linux 4.0+), so :func:`peak_rss` read after a stage is that stage's peak, not the
process's since it started (``getrusage``'s ``ru_maxrss`` cannot be reset). Where ``/proc`` is missing (not Linux)
the peak is ``ru_maxrss`` and cannot be reset: :func:`reset_peak` returns False.

:func:`storage_reads` counts the bytes this process made the kernel read from storage (``/proc/self/io``'s
``read_bytes``): reads the page cache served are not in it, so a stage whose inputs outgrow the page cache shows
there.
"""

from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

_FIELD = re.compile(r"^(VmHWM|VmRSS|RssAnon|RssFile):\s+(\d+)\s*kB", re.MULTILINE)


def _status() -> dict[str, int]:
    try:
        with open("/proc/self/status") as f:
            return {k: int(v) * 1024 for k, v in _FIELD.findall(f.read())}
    except OSError:
        return {}


def reset_peak() -> bool:
    """Reset this process's peak resident set to its current one; False where the platform cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """This process's peak resident set in bytes since it started or since the last :func:`reset_peak`."""
    s = _status()
    if "VmHWM" in s:
        return s["VmHWM"]
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def rss() -> dict[str, int]:
    """This process's resident set now, in bytes: ``rss`` (all), ``anon`` (heap: not file pages such as a
    memory-mapped cache) and ``file``; empty where ``/proc`` is missing."""
    s = _status()
    return {k: s[f] for k, f in (("rss", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile")) if f in s}


def storage_reads() -> int | None:
    """Bytes this process has caused to be read from storage since it started (``/proc/self/io`` ``read_bytes``:
    page-cache hits excluded); None where the platform does not count them."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None
