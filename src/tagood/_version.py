"""The version of tagood (one place; the package top and results files read it)."""

__version__ = "0.1.0"
