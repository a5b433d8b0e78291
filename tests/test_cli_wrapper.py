"""The one CLI wrapper (:func:`tagood.cli.common.cli_command`): every registered command is wrapped, errors become
one message with exit status 2, the device is checked before any work, and `tagood cache` takes --quiet/--verbose."""

from __future__ import annotations

import logging

import pytest
import typer
from typer.testing import CliRunner

from tagood.cli.main import app
from tagood.cli.common import WRAPPED, user_message

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
    assert {"demo", "bench", "fit", "score", "extract", "metrics", "methods", "selftest", "convert ram", "cache ls",
            "cache rm", "cache verify"} <= set(cmds)
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
    assert user_message(KeyError("no such method 'x'")) == "no such method 'x'"
    assert user_message(FileNotFoundError(2, "No such file or directory", "/a/b")) == "/a/b: No such file or directory"
    assert user_message(FileNotFoundError("/a/b was moved; give --clip")) == "/a/b was moved; give --clip"
    assert user_message(ValueError("bad tau")) == "bad tau"
    assert user_message(RuntimeError("boom")).startswith("unexpected error (RuntimeError: boom)")
    assert user_message(RuntimeError("boom"), (RuntimeError,)) == "boom"
