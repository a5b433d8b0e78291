"""The numerical self-test for real weights: real EfficientNet-Lite0 weights pass, random tiny RAM / CLIP fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tagood.backbones.selftest import selftest_dual_encoder, selftest_tagger
from tagood.cli.main import app
from tiny_models import write_tiny_clip, write_tiny_ram

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("selftest")
    write_tiny_ram(d / "ram")
    write_tiny_clip(d / "clip")
    return d


def _by_name(checks):
    return {c.name: c for c in checks}


def test_real_efficientnet_weights_pass_every_check(backbone):
    checks = _by_name(selftest_tagger(backbone))
    assert all(c.passed for c in checks.values()), checks
    assert "daisy" in checks["semantics"].detail and "palace" in checks["semantics"].detail


def test_offline_dual_encoder_passes_zero_shot(backbone):
    pytest.importorskip("transformers")
    from tagood.backbones.offline import OfflineDualEncoder

    checks = _by_name(selftest_dual_encoder(OfflineDualEncoder(backbone)))
    assert all(c.passed for c in checks.values()), checks


def test_random_tiny_ram_fails_semantics_but_is_well_formed(tiny):
    from tagood.backbones.ram import load_ram

    r = load_ram(tiny / "ram" / "ram_tiny.pth", tiny / "ram" / "ram_tag_list.txt", tiny / "ram" / "ram_tag_list_threshold.txt")
    checks = _by_name(selftest_tagger(r))
    assert checks["shapes"].passed and checks["deterministic"].passed and checks["attention"].passed
    assert not checks["semantics"].passed


def test_selftest_cli_exit_codes(tiny, tagood_home):
    ok = runner.invoke(app, ["selftest", "efficientnet"], terminal_width=200)
    assert ok.exit_code == 0, ok.output
    assert "FAIL" not in ok.output
    bad = runner.invoke(app, ["selftest", "clip", "--checkpoint", str(tiny / "clip")], terminal_width=200)
    assert bad.exit_code == 1, bad.output
    assert "FAIL" in bad.output and "semantics" in bad.output
    ram = runner.invoke(app, ["selftest", "ram", "--checkpoint", str(tiny / "ram" / "ram_tiny.pth"),
                              "--tags", str(tiny / "ram" / "ram_tag_list.txt")], terminal_width=200)
    assert ram.exit_code == 1 and "semantics" in ram.output
    usage = runner.invoke(app, ["selftest", "ram"], terminal_width=200)
    assert usage.exit_code == 2 and "--checkpoint" in usage.output
