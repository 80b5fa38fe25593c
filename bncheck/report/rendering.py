"""How a report reaches the formats without importing them (formats sit above the report in
the flow): :mod:`bncheck.formats` installs its resolver here when it is imported, and
:meth:`Report.render`, :meth:`Report.save`, :meth:`Report.plot` and :meth:`ReportDiff.render`
ask it for a view. A view is named by a kind and a name:

* ``("report", FORMAT)``: ``render(report, **options) -> str`` (table, json, markdown...);
* ``("diff", FORMAT)``: ``render(report_diff, **options) -> str``;
* ``("ranking", FORMAT)``: ``render(ranking, **options) -> str`` (several drift reports ranked);
* ``("figure", "drift" | "channels")``: ``figure(report[, layer])`` (matplotlib);
* ``("fragment", "html")``: ``fragment(report) -> str`` for notebooks;
* ``("extension", SUFFIX)``: the format name a file extension means.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Resolver = Callable[[str, str], Any]

_resolver: Resolver | None = None
#: the package that provides views unless another resolver was installed (a plugin name, not
#: an import: the report layer does not depend on it)
DEFAULT_PROVIDER = "bncheck.formats"


def install(resolver: Resolver) -> None:
    """Make ``resolver(kind, name)`` the source of every view."""
    global _resolver
    _resolver = resolver


def view(kind: str, name: str) -> Any:
    """The view ``name`` of ``kind`` (UsageError from the resolver when there is none)."""
    if _resolver is None:
        importlib.import_module(DEFAULT_PROVIDER)  # installs its resolver
    assert _resolver is not None, f"{DEFAULT_PROVIDER} did not install a resolver"
    return _resolver(kind, name)
