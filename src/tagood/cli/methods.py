"""``tagood methods``: every registered detector with its description, paper, the inputs it reads and each option
with its type, default, range and one-line description -- plain text generated from the one declaration of the
options (:func:`tagood.detectors.options.describe`)."""

from __future__ import annotations

import re
import textwrap
from typing import Annotated, Any, cast

import typer

from tagood.cli.common import cli_command
from tagood.errors import ConfigError

WIDTH = 100
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`<]*?)(?:\s*<[^>]*>)?`")


def plain(text: str) -> str:
    """Docstring markup as plain text: a Sphinx role ``:class:`~a.b.C``` becomes `C` (`a.b.C` without the ``~``),
    ````x```` becomes `x`, bold ``**x**`` plain x."""
    def role(m: re.Match[str]) -> str:
        target = m.group(1).strip()
        return f"`{target.rsplit('.', 1)[-1] if m.group(0).split('`', 1)[1].startswith('~') else target}`"

    return _ROLE.sub(role, text).replace("``", "`").replace("**", "")


def description(doc: str | None) -> str:
    """The first paragraph of a docstring as one line of plain text (whole sentences)."""
    first = re.split(r"\n\s*\n", (doc or "").strip(), maxsplit=1)[0]
    return plain(" ".join(first.split()))


def option_line(o: Any) -> str:
    """One option as ``name  type range, default D: description`` (an :class:`tagood.detectors.options.OptionInfo`)."""
    kind = f"{o.type} {o.constraint}".strip()
    default = o.default_text
    if isinstance(o.default, str) and not o.required and re.search(r"[\s:,\[\]=]", default):
        default = repr(o.default)  # a text default with spaces or punctuation, quoted as in a spec
    return f"{o.name}  {kind}, default {default}: {plain(o.description) or '(no description)'}"


def method_text(name: str) -> str:
    """The block ``tagood methods`` prints for one detector."""
    from tagood import detectors

    cls = cast("type[detectors.Detector]", detectors.get_class(name))
    needs = sorted(set(cls.requires) | set(cls.fit_requires or ()) | set(cls.context_requires))
    flags = [f"reads {', '.join(needs)}" if needs else "reads nothing"]
    if not cls.requires_fit:
        flags.append("training-free")
    if cls.test_time:
        flags.append("test-time")
    if not cls.saveable:
        flags.append("cannot be saved")
    wrap = textwrap.TextWrapper(width=WIDTH, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False)
    lines = [f"{name}  ({'; '.join(flags)})", *wrap.wrap(description(cls.__doc__))]
    if cls.paper:
        lines += textwrap.wrap(f"Paper: {plain(cls.paper)}", WIDTH, initial_indent="  ", subsequent_indent="    ",
                               break_on_hyphens=False)
    opts = detectors.describe(cls)
    if not opts:
        lines.append("  Options: none")
    else:
        lines.append("  Options:")
        for o in opts:
            lines += textwrap.wrap(option_line(o), WIDTH, initial_indent="    ", subsequent_indent="        ",
                               break_on_hyphens=False)
    return "\n".join(lines)


@cli_command()
def methods(
    names: Annotated[list[str] | None, typer.Argument(help="Detectors to show (default: every one).")] = None,
) -> None:
    """List the detectors: what each reads, its paper, and every option with its default and description."""
    from tagood import detectors

    known = detectors.available()
    unknown = [n for n in names or [] if n not in known]
    if unknown:
        raise ConfigError(f"no detector named {', '.join(map(repr, unknown))}; the detectors are {', '.join(known)}")
    typer.echo("Detectors (every score: higher = more OOD). Give options in brackets, e.g. "
               "`tagood demo --methods 'knn[k=10],energy[temperature=2]'`.\n")
    typer.echo("\n\n".join(method_text(n) for n in (names or known)))
