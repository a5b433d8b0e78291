"""A griffe extension for the API pages of the docs (mkdocs.yml loads it through mkdocstrings' ``extensions``).

tagood's docstrings are Google style with a few reStructuredText habits: Sphinx roles (``:class:`~a.b.C```,
``:func:`score```) and ``Example:`` sections of doctest lines. The API pages render docstrings as Markdown, where a
role would show as raw text and a doctest's output line ``[...]`` could be read as a link reference. Before griffe
parses a docstring this extension rewrites a role into a code span (the last dotted part with ``~``, the whole name
without), names an ``Example:`` section ``Examples:`` (griffe's doctest-aware section) and ends a paragraph that
introduces an indented literal block (reStructuredText's ``::``) with one colon. The docstrings in the
sources are not changed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const|ref|term)s?:`(?P<tilde>~?)(?P<target>[^`<]+?)"
                  r"(?:\s*<(?P<inner>[^>]+)>)?`")
EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.M)
LITERAL = re.compile(r"(?<=\S)::[ \t]*$", re.M)  # "... like this::" introducing an indented literal block


def to_markdown(text: str) -> str:
    """A docstring with its Sphinx roles as code spans, ``Example:`` as ``Examples:`` and ``::`` as ``:``.

    Args:
        text: the docstring.

    Returns:
        The rewritten docstring.
    """
    def role(m: re.Match[str]) -> str:
        target = (m["inner"] or m["target"]).strip()
        shown = m["target"].strip() if m["inner"] else (target.rsplit(".", 1)[-1] if m["tilde"] else target)
        return f"`{shown}`"

    return LITERAL.sub(":", EXAMPLE.sub(lambda m: f"{m['indent']}Examples:", ROLE.sub(role, text)))


class SphinxRolesToMarkdown(griffe.Extension):
    """Rewrite every docstring griffe loads (see :func:`to_markdown`)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called for every object griffe loads: module, class, function, attribute."""
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
