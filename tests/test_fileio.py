"""tagood.runtime.fileio: atomic writes leave either the old file or the complete new one, and no temp files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagood.runtime.fileio import (
    atomic_copy,
    atomic_directory,
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
)


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=4096))
def test_bytes_roundtrip(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    d = tmp_path_factory.mktemp("b")
    p = d / "x.bin"
    p.write_bytes(b"old")
    atomic_write_bytes(p, data)
    assert p.read_bytes() == data
    assert _leftovers(d) == []


def test_json_and_text(tmp_path: Path) -> None:
    obj = {"a": [1, 2.5, None], "p": tmp_path}  # a Path is not JSON: written as its str
    data = atomic_write_json(tmp_path / "m.json", obj)
    assert (tmp_path / "m.json").read_bytes() == data
    assert json.loads(data) == {"a": [1, 2.5, None], "p": str(tmp_path)}
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"


def test_failure_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    p = tmp_path / "scores.npz"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(p) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert p.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_open_with_numpy(tmp_path: Path) -> None:
    p = tmp_path / "s.npz"
    with atomic_open(p) as f:
        np.savez(f, a=np.arange(5.0))
    with np.load(p) as z:
        np.testing.assert_array_equal(z["a"], np.arange(5.0))
    assert _leftovers(tmp_path) == []


def test_write_with_callback(tmp_path: Path) -> None:
    p = tmp_path / "w.npy"
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == tmp_path and tmp.name.endswith(".npy.tmp")
        with open(tmp, "wb") as f:  # np.save(str) would append .npy; a file object keeps the name
            np.save(f, np.ones(3))

    atomic_write_with(p, write, suffix=".npy.tmp")
    np.testing.assert_array_equal(np.load(p), np.ones(3))
    assert not seen[0].exists() and _leftovers(tmp_path) == []

    def bad(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(p, bad)
    np.testing.assert_array_equal(np.load(p), np.ones(3))
    assert _leftovers(tmp_path) == []


def test_write_with_writer_that_writes_nothing(tmp_path: Path) -> None:
    def nothing(tmp: Path) -> None:
        tmp.unlink()

    with pytest.raises(FileNotFoundError, match="left no file"):
        atomic_write_with(tmp_path / "n.bin", nothing)
    assert list(tmp_path.iterdir()) == []


def test_copy(tmp_path: Path) -> None:
    src = tmp_path / "a.bin"
    src.write_bytes(bytes(range(256)) * 10)
    atomic_copy(src, tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == src.read_bytes()
    assert _leftovers(tmp_path) == []


def test_directory(tmp_path: Path) -> None:
    out = tmp_path / "conv"
    with atomic_directory(out) as d:
        (d / "w.bin").write_bytes(b"w")
        assert not out.exists()
    assert (out / "w.bin").read_bytes() == b"w"
    with pytest.raises(OSError):  # a non-empty destination is never replaced
        with atomic_directory(out) as d:
            (d / "x").write_bytes(b"x")
    assert sorted(p.name for p in out.iterdir()) == ["w.bin"]
    with pytest.raises(ValueError):
        with atomic_directory(tmp_path / "other") as d:
            (d / "x").write_bytes(b"x")
            raise ValueError("stop")
    assert not (tmp_path / "other").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_written_files_get_the_usual_permissions(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    """Atomic writes leave the permissions a plain open() / mkdir() would (temp files start owner-only): a shared
    feature cache or a results folder stays readable to the group when the umask allows it."""
    import subprocess
    import sys

    code = f"""
import os, stat
from pathlib import Path
os.umask({umask})
from tagood.runtime import fileio
d = Path({str(tmp_path)!r})
fileio.atomic_write_bytes(d / "a.bin", b"x")
fileio.atomic_write_json(d / "b.json", {{"k": 1}})
fileio.atomic_write_with(d / "c.bin", lambda p: p.write_bytes(b"y"))
with fileio.atomic_directory(d / "folder") as t:
    (t / "inner.txt").write_text("z")
print(" ".join(oct(stat.S_IMODE((d / n).stat().st_mode)) for n in ("a.bin", "b.json", "c.bin", "folder")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [oct(file_mode)] * 3 + [oct(dir_mode)]
