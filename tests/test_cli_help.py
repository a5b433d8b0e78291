"""The command line is consistent (issue 21, deliverable 9): help text on every option and argument of every
command, one description of the default cache, `--methods` everywhere, `tagood bench imagenet` its own command."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from tagood.cli.main import app
from tagood.cli.options import CACHE_HELP

runner = CliRunner()
IMAGENET_ONLY = ("--root", "--tagger", "--checkpoint", "--tags", "--thresholds", "--clip", "--train-per-class")


def _walk(cmd: Any, path: str = "tagood") -> dict[str, Any]:
    """Every command and group of the app by its command line, the groups included."""
    out = {path: cmd}
    for name, sub in getattr(cmd, "commands", {}).items():
        out.update(_walk(sub, f"{path} {name}"))
    return out


def _is_option(p: object) -> bool:
    return getattr(p, "param_type_name", None) == "option"  # typer bundles its own click: no isinstance


COMMANDS = _walk(typer.main.get_command(app))


def test_every_option_and_argument_has_help() -> None:
    assert len(COMMANDS) >= 16
    missing = [f"{path} {p.opts[0] if _is_option(p) else p.name.upper()}"
               for path, cmd in COMMANDS.items() for p in cmd.params if not (getattr(p, "help", None) or "").strip()]
    assert not missing, f"options / arguments without a help text: {missing}"


def test_every_cache_option_reads_the_one_description() -> None:
    found = {path: p.help for path, cmd in COMMANDS.items() for p in cmd.params if "--cache" in getattr(p, "opts", ())}
    assert {"tagood demo", "tagood bench run", "tagood bench imagenet", "tagood extract", "tagood fit", "tagood score",
            "tagood cache ls", "tagood cache rm", "tagood cache verify"} <= set(found)
    assert set(found.values()) == {CACHE_HELP}, found
    from tagood.backbones.home import default_cache_root

    assert "$TAGOOD_CACHE" in CACHE_HELP and "$TAGOOD_HOME/features" in CACHE_HELP  # what default_cache_root reads
    assert "TAGOOD_CACHE" in (default_cache_root.__doc__ or "") and "TAGOOD_HOME" in (default_cache_root.__doc__ or "")


def test_methods_is_the_one_spelling() -> None:
    visible = {path: [o for p in cmd.params if _is_option(p) and not p.hidden for o in p.opts]
               for path, cmd in COMMANDS.items()}
    assert all("--method" not in opts for opts in visible.values()), visible
    for path in ("tagood demo", "tagood bench run", "tagood bench imagenet", "tagood fit", "tagood metrics"):
        assert "--methods" in visible[path], path
    old = next(p for p in COMMANDS["tagood fit"].params if "--method" in getattr(p, "opts", ()))
    assert old.hidden and "eprecated" in old.help


def test_bench_imagenet_is_its_own_command() -> None:
    r = runner.invoke(app, ["bench", "--help"], terminal_width=200)
    assert r.exit_code == 0 and "Usage: root bench [OPTIONS] [config]" in r.output, r.output  # not "bench run"
    flat = " ".join(r.output.split())
    assert "--example-config" in flat and "tagood bench imagenet --help" in flat
    assert not [o for o in IMAGENET_ONLY if o in flat], r.output
    r = runner.invoke(app, ["bench", "imagenet", "--help"], terminal_width=200)
    assert r.exit_code == 0 and all(o in r.output for o in IMAGENET_ONLY) and "--example-config" not in r.output
    r = runner.invoke(app, ["bench", "imagenet", "--tagger", "ram"], terminal_width=200)
    assert r.exit_code == 2 and "Missing option '--root'" in r.output
    r = runner.invoke(app, ["bench", "imagenet", "--root", "x", "--tagger", "ram"], terminal_width=200)
    assert r.exit_code == 2 and "--tagger ram needs --checkpoint" in r.output
    r = runner.invoke(app, ["bench", "cfg.toml", "--root", "x"], terminal_width=200)  # not an option of a config run
    assert r.exit_code == 2 and "No such option: --root" in r.output


def test_fit_takes_one_method(tmp_path) -> None:
    r = runner.invoke(app, ["fit", str(tmp_path), "--out", str(tmp_path / "d"), "--methods", "knn,msp"], terminal_width=200)
    assert r.exit_code == 2 and "fits and saves one detector; --methods names 2 (knn, msp)" in r.output, r.output
    r = runner.invoke(app, ["fit", str(tmp_path), "--out", str(tmp_path / "d"), "--methods", "knn", "--method", "msp"],
                      terminal_width=200)
    assert r.exit_code == 2 and "give --methods only" in r.output, r.output
