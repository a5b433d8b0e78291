"""Run a ``tagood`` command as a process that file permissions apply to, for tests of unreadable folders and
read-only caches: under root (a container) the command runs without capabilities (``setpriv``), so a ``chmod 000``
folder is unreadable to it as it is to any user."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@functools.cache
def prefix() -> list[str] | None:
    """The command prefix that drops root's capabilities (``[]`` when not root), or None when that is not possible."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    cmd = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--"]
    try:
        ok = subprocess.run([*cmd, sys.executable, "-c", "pass"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return cmd if ok else None


def tagood(args: list[str | Path], timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tagood ARGS`` in a subprocess that file permissions apply to (skips the test where none can be started)."""
    pre = prefix()
    if pre is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([*pre, sys.executable, "-m", "tagood", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)
