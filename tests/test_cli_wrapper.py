"""The one CLI wrapper (:func:`tagood.cli.common.cli_command`): every registered command is wrapped, errors become
one message with exit status 2, the device is checked before any work, and `tagood cache` takes --quiet/--verbose."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from tagood.cli.common import WRAPPED, user_message
from tagood.cli.main import app

runner = CliRunner()


def _commands(group, prefix: str = "") -> dict:
    out = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a sub-group (typer bundles its own click)
            out.update(_commands(cmd, f"{prefix}{name} "))
        else:
            out[prefix + name] = cmd
    return out


def test_every_command_is_wrapped() -> None:
    cmds = _commands(typer.main.get_command(app))
    assert {"demo", "bench run", "bench imagenet", "fit", "score", "extract", "metrics", "methods", "selftest",
            "convert ram", "cache ls", "cache rm", "cache verify"} <= set(cmds)
    unwrapped = [n for n, c in cmds.items() if not getattr(c.callback, WRAPPED, False)]
    assert not unwrapped, f"commands without @cli_command(): {unwrapped}"


@pytest.mark.parametrize("args", [["ls"], ["verify"], ["rm", "--all"]])
def test_cache_commands_take_quiet_and_verbose(tmp_path, args) -> None:
    for flag in ("--quiet", "--verbose", "-q", "-v"):
        r = runner.invoke(app, ["cache", *args, "--cache", str(tmp_path / "none"), flag], terminal_width=200)
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["cache", *args, "--cache", str(tmp_path), "-q", "-v"], terminal_width=200)
    assert r.exit_code == 2 and "--quiet and --verbose exclude each other" in r.output
    logging.getLogger().handlers.clear()


def test_cache_rm_of_a_non_entry_is_one_message(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    r = runner.invoke(app, ["cache", "rm", "x", "--cache", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 2 and "is not a cache entry" in r.output and "Traceback" not in r.output


def test_device_lists_point_to_torchrun(tmp_path) -> None:
    for dev in ("cpu,cpu", "cuda:0,cuda:1", "cuda:all"):
        r = runner.invoke(app, ["extract", str(tmp_path), "--cache", str(tmp_path / "c"), "--device", dev],
                          terminal_width=200)
        assert r.exit_code == 2 and "torchrun" in r.output and "one process drives one device" in r.output, r.output
    assert not (tmp_path / "c").exists()


def test_user_message_forms() -> None:
    """A TagoodError (every user-caused error) is its message; an OSError with the system's reason names the path;
    anything else is a bug, reported as such with the pointer to --debug."""
    from tagood.cache import CacheError as CacheModuleError
    from tagood.data import DataSourceError
    from tagood.detectors.options import OptionError
    from tagood.errors import CacheError, CheckpointError, ConfigError, InputError, TagoodError

    for cls in (TagoodError, ConfigError, InputError, CacheError, CheckpointError, OptionError, DataSourceError,
                CacheModuleError):
        assert user_message(cls("bad tau; pass tau in (0, 1]")) == "bad tau; pass tau in (0, 1]", cls
    assert user_message(FileNotFoundError(2, "No such file or directory", "/a/b")) == "/a/b: No such file or directory"
    assert user_message(PermissionError(13, "Permission denied")) == "Permission denied"
    for e in (ValueError("bad tau"), KeyError("k"), RuntimeError("boom"), FileNotFoundError("/a/b gone"),
              type("SomethingConfigError", (Exception,), {})("named like a user error")):
        msg = user_message(e)
        assert msg.startswith(f"unexpected error ({type(e).__name__}: ") and "tagood --debug" in msg, msg


def test_a_tagood_error_is_one_line_and_anything_else_unexpected(tmp_path) -> None:
    """The mapping at the boundary, through real commands: a bad option (ConfigError) or a folder without scores
    (InputError) is one line, exit 2, not an "unexpected error"."""
    r = runner.invoke(app, ["metrics", str(tmp_path)], terminal_width=200)
    assert r.exit_code == 2 and r.output.strip().startswith(f"{tmp_path / 'scores.npz'}: no per-sample scores"), r.output
    from tagood.bench.scores import save_scores

    save_scores(tmp_path / "scores.npz", {"a": {"test": np.arange(5.0), "x": np.arange(5.0)}})
    r = runner.invoke(app, ["metrics", str(tmp_path), "--compare", "a,b,c"], terminal_width=200)
    assert r.exit_code == 2 and r.output.strip() == "--compare takes two methods 'A,B', got 'a,b,c'", r.output
    for bad in (["--compare", "a,zz"], ["--compare", "a,a"], ["--bootstrap", "1"], ["--bootstrap", "10", "--level", "2"]):
        r = runner.invoke(app, ["metrics", str(tmp_path), *bad], terminal_width=200)
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, (bad, r.output)
        assert "unexpected" not in r.output and "Traceback" not in r.output, (bad, r.output)
