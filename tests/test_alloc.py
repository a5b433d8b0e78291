"""glibc malloc thresholds (tagood.runtime.alloc): a freed 64 MiB buffer is reused from the heap instead of being faulted
in (and zero-filled) again, measured by the process's minor page faults in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tagood.runtime.alloc import keep_large_allocations

PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "1":
    from tagood.runtime.alloc import keep_large_allocations
    assert keep_large_allocations()
def touch():
    a = np.empty(64 * 1024 * 1024, dtype=np.uint8)
    a[::4096] = 1  # one write per page
    del a
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setting: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, setting], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_large_buffer_reused_from_the_heap():
    default, kept = _faults("0"), _faults("1")
    # glibc's default: a fresh mmap faulted in again (16,384 4 KiB pages, or at least 32 transparent huge pages)
    assert default >= 32, default
    assert kept * 10 <= default, (kept, default)


def test_limit_must_be_positive():
    with pytest.raises(ValueError, match="limit_mb"):
        keep_large_allocations(0)
