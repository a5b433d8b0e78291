"""`tagood methods` (issue 21, deliverable 5): every detector with its paper and every option with its type, default
and one-line description, as plain text generated from the one declaration (`tagood.detectors.describe`)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from tagood import detectors
from tagood.cli.main import app
from tagood.cli.methods import description, method_text, option_line, plain

runner = CliRunner()
ROLE = re.compile(r":(class|func|meth|mod|attr|data|exc|obj|ref|doc):`")


@pytest.fixture(scope="module")
def output() -> str:
    r = runner.invoke(app, ["methods"], terminal_width=120)
    assert r.exit_code == 0, r.output
    return r.output


def _sections(text: str) -> dict[str, str]:
    """The block of each detector: from its name at the start of a line to the next blank line."""
    blocks = text.split("\n\n")[1:]
    return {b.split()[0]: b for b in blocks if b.strip()}


def test_every_detector_and_every_option_is_listed(output: str) -> None:
    sections = _sections(output)
    assert sorted(sections) == detectors.available()
    for name in detectors.available():
        block = " ".join(sections[name].split())
        cls = detectors.get_class(name)
        if cls.paper:
            assert "Paper: " + " ".join(plain(cls.paper).split()) in block, name
        opts = detectors.describe(name)
        assert ("Options: none" in block) == (not opts), name
        for o in opts:
            assert " ".join(option_line(o).split()) in block, (name, o.name)
            assert f"default {o.default_text}" in block or f"default {o.default!r}" in block, (name, o.name)
            assert o.description, f"{name}: option {o.name} has no description"
    assert "k integer >= 1, default 50: " in " ".join(sections["knn"].split())
    assert "test-time; cannot be saved" in sections["adaneg"] and "training-free" in sections["msp"]


def test_plain_text_without_sphinx_roles_or_markup(output: str) -> None:
    assert not ROLE.search(output), ROLE.search(output)
    assert "``" not in output and "**" not in output
    assert plain("see :func:`~tagood.detectors.knn.score` and :class:`tagood.Context`, ``k``; **higher**") == \
        "see `score` and `tagood.Context`, `k`; higher"
    assert description("First line\n    goes :meth:`~a.B.fit` on.\n\n    Details.") == "First line goes `fit` on."


def test_one_method_and_an_unknown_name() -> None:
    r = runner.invoke(app, ["methods", "knn", "energy"], terminal_width=120)
    assert r.exit_code == 0 and set(_sections(r.output)) == {"knn", "energy"}
    assert method_text("knn") in r.output
    r = runner.invoke(app, ["methods", "knnn"], terminal_width=120)
    assert r.exit_code == 2 and "no detector named 'knnn'" in r.output
