"""The ``tagood`` command (typer): parsing and messages only."""

from tagood.cli.main import app, main

__all__ = ["app", "main"]
