"""This process's resources per stage (tagood.runtime.memory: the resettable peak RSS and the storage reads) and the
machine a result file names (tagood.runtime.machine)."""

from __future__ import annotations

import mmap
import os
import sys

import numpy as np
import pytest

from tagood.runtime import memory

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc counters are Linux's")


@linux
def test_reset_peak_forgets_a_freed_buffer():
    # an anonymous mapping of its own, written (resident) and unmapped: the memory leaves the process whatever the
    # allocator does with freed heap blocks (a malloc'd buffer can stay resident in a long-lived test worker)
    buf = mmap.mmap(-1, 96 << 20)
    np.frombuffer(buf, dtype=np.uint8)[:] = 1
    high = memory.peak_rss()
    buf.close()
    assert memory.reset_peak()
    # the mark restarts from the resident set now, 96 MiB lower than the buffer's high-water mark
    assert memory.peak_rss() < high - (64 << 20)


@linux
def test_storage_reads_count_a_file_read_past_the_page_cache(tmp_path):
    path = tmp_path / "block.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(16 << 20))
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages leave the page cache
    finally:
        os.close(fd)
    before = memory.storage_reads()
    if before is None:
        pytest.skip("this kernel does not count storage reads (/proc/self/io)")
    assert path.read_bytes()
    assert memory.storage_reads() - before >= 15 << 20
    # read again: the page cache serves it, storage does not
    again = memory.storage_reads()
    assert path.read_bytes()
    assert memory.storage_reads() - again < 1 << 20


def test_cpu_model_names_the_processor_the_kernel_reports():
    from tagood.runtime.machine import cpu_model

    model = cpu_model()
    if sys.platform.startswith("linux"):
        with open("/proc/cpuinfo") as f:
            names = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
        if names:
            assert model in names
    assert isinstance(model, str)
