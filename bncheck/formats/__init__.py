"""Report formats. Each module renders a :class:`~bncheck.report.report.Report` to text; add a format
by writing one module with a ``render(report, **options) -> str`` function and listing it here.

The human-readable formats place the section of the report's result type
(:mod:`bncheck.formats.section`); a section module is imported when a report first needs it
(add a command's section by writing one module and naming it in
:data:`bncheck.formats.section.SECTION_MODULES`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from bncheck.errors import UsageError
from bncheck.formats.common import encodable
from bncheck.report import rendering

FORMATS = {
    "table": "bncheck.formats.table",
    "json": "bncheck.formats.json",
    "markdown": "bncheck.formats.markdown",
    "junit": "bncheck.formats.junit",
    "html": "bncheck.formats.html",
    "sarif": "bncheck.formats.sarif",
    "github": "bncheck.formats.github",
    "gitlab": "bncheck.formats.gitlab",
}

#: The format a report file's extension names (``--output report.html`` needs no ``--format``).
EXTENSIONS = {".json": "json", ".md": "markdown", ".xml": "junit", ".html": "html", ".htm": "html", ".sarif": "sarif"}
#: The formats a report file of each of those extensions may hold (SARIF and GitLab's code
#: quality report are JSON; GitHub's job summary is Markdown)
FITS_EXTENSION = {
    ".json": {"json", "sarif", "gitlab"}, ".md": {"markdown", "github"}, ".xml": {"junit"},
    ".html": {"html"}, ".htm": {"html"}, ".sarif": {"sarif"},
}  # fmt: skip


def format_for_path(path) -> str:
    """The format named by ``path``'s extension; UsageError when it names none."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise UsageError(
            f"cannot tell the report format from {Path(path).name!r}; pass a format or use one of: "
            f"{', '.join(EXTENSIONS)}."
        )
    return EXTENSIONS[suffix]


def get_renderer(name: str) -> Callable[..., str]:
    if name not in FORMATS:
        raise UsageError(f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}.")
    return _encodable(importlib.import_module(FORMATS[name]).render)


def _encodable(render: Callable[..., str]) -> Callable[..., str]:
    """``render`` whose text always encodes as UTF-8 (:func:`~bncheck.formats.common.encodable`)."""

    def safe(*args, **options) -> str:
        return encodable(render(*args, **options))

    return safe


def render_many(reports: list, name: str, **options) -> str:
    """Several reports (``bncheck audit A B ...``) as one document of format ``name``: the
    format module's ``combine(texts, reports)`` where it has one (JSON, SARIF, JUnit and GitLab
    merge into one valid file), else the renderings one after the other."""
    renderer = get_renderer(name)
    texts = [renderer(report, **options) for report in reports]
    combine = getattr(importlib.import_module(FORMATS[name]), "combine", None)
    return encodable(combine(texts, reports) if combine is not None else "\n".join(texts))


def _resolve(kind: str, name: str):
    """The views :mod:`bncheck.report.rendering` asks for (see there)."""
    if kind == "report":
        return get_renderer(name)
    if kind == "extension":
        return format_for_path(name)
    if kind == "ranking":
        ranking_view = importlib.import_module("bncheck.formats.ranking")
        ranking_view.check_format(name)
        return lambda ranking, **options: ranking_view.render(ranking, name, **options)
    module, attribute = _VIEWS.get((kind, name), (None, None))
    if module is None:
        if kind == "diff":
            raise UsageError(f"bncheck diff renders table, json or markdown, not {name!r}.")
        raise UsageError(f"no {kind} view named {name!r}.")
    view = getattr(importlib.import_module(module), attribute)
    return _encodable(view) if kind in ("diff", "fragment") else view


#: (kind, name) -> (module, attribute) of the other views
_VIEWS = {
    ("diff", "table"): ("bncheck.formats.diff_view", "render_table"),
    ("diff", "markdown"): ("bncheck.formats.diff_view", "render_markdown"),
    ("figure", "drift"): ("bncheck.formats.plot", "drift_figure"),
    ("figure", "channels"): ("bncheck.formats.plot", "channel_figure"),
    ("fragment", "html"): ("bncheck.formats.html", "render_fragment"),
}

rendering.install(_resolve)
