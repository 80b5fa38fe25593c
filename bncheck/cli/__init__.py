"""The ``bncheck`` command line: a typer app over the Python API (:mod:`bncheck.cli.app`)."""

from bncheck.cli.app import app, main

__all__ = ["app", "main"]
