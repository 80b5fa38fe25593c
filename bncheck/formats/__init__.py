"""Report formats. Each module renders a :class:`~bncheck.report.Report` to text; add a format
by writing one module with a ``render(report, **options) -> str`` function and listing it here."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from bncheck.errors import UsageError

FORMATS = {
    "table": "bncheck.formats.table",
    "json": "bncheck.formats.json",
    "markdown": "bncheck.formats.markdown",
    "junit": "bncheck.formats.junit",
}


def get_renderer(name: str) -> Callable[..., str]:
    if name not in FORMATS:
        raise UsageError(f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}.")
    return importlib.import_module(FORMATS[name]).render
