"""The ``bncheck`` command line: a typer app over the Python API (``bncheck.cli.app.app``).

:func:`main` (the ``bncheck`` script) answers ``bncheck --version`` before typer, numpy or
any model runtime is imported; everything else goes to the typer app."""

from __future__ import annotations

import importlib
import itertools
import sys
from collections.abc import Sequence

from bncheck._version import __version__

#: flags that may stand before ``--version`` on a line that only asks for the version
_VERSION_LINE_FLAGS = frozenset({"--version", "--debug", "--verbose"})


def version_only(args: Sequence[str]) -> bool:
    """True when ``args`` ask for the version and nothing else
    (``bncheck [--debug] [--verbose] --version [...]``, as typer's eager option reads it)."""
    leading = list(itertools.takewhile(lambda arg: arg.startswith("-"), args))
    return "--version" in leading and set(leading) <= _VERSION_LINE_FLAGS


def main(argv: Sequence[str] | None = None) -> None:
    """The ``bncheck`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if version_only(args):
        sys.stdout.write(f"bncheck {__version__}\n")
        return
    # the typer app is imported only here: --version above must not pay for it (issue 15)
    importlib.import_module("bncheck.cli.app").run(args)


__all__ = ["main", "version_only"]
