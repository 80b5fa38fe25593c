"""Per-command sections of the human-readable formats (table, markdown, html).

A :class:`Section` subclass is the part of the report that belongs to one result type
(:class:`~bncheck.report.results.DriftResult`, ``FoldResult``, ``RecalibrationResult``): its
summary lines, its terminal tables, its Markdown and its HTML. The formats ask
:func:`section_for` and place what it gives; they never ask which command made the report.
A subclass registers itself for its ``result_type``; :func:`section_for` imports the module of a
report's result type (:data:`SECTION_MODULES`) when it is first asked, so that a command whose
report needs no section (``-f json``) loads none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from rich.console import RenderableType

    from bncheck.layer import BNLayer
    from bncheck.report.report import Report

#: result type -> the section that renders it (filled as the section modules are imported)
SECTIONS: dict[type, type[Section]] = {}

#: name of a result type -> the module of its section (add a command's section here)
SECTION_MODULES = {
    "DriftResult": "bncheck.formats.drift_section",
    "FoldResult": "bncheck.formats.fold_section",
    "RecalibrationResult": "bncheck.formats.recalibrate_section",
}


class Section:
    """The part of a report without a command result (audit): nothing beyond the layers."""

    #: the result type this section renders (None: a report without a result)
    result_type: ClassVar[type | None] = None
    #: the header of the HTML layers table's fold column
    fold_column: ClassVar[str] = "foldable"

    def __init__(self, report: Report):
        self.report = report
        self.result: Any = report.result

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.result_type is not None:
            SECTIONS[cls.result_type] = cls

    def summary_lines(self) -> list[str]:
        """One fact per line (plain text), for the terminal, Markdown and HTML lists."""
        return []

    def fold_cell(self, layer: BNLayer, *, reason: bool = False) -> str | None:
        """The layer's fold outcome (``folded → conv1``, ``kept``; with ``reason``: why kept), None
        when the report did not fold."""
        return None

    def table_parts(self) -> list[RenderableType]:
        """What the terminal report shows after the layers table."""
        return []

    def markdown_lines(self) -> list[str]:
        """What the Markdown report shows before the findings."""
        return []

    def html_facts(self) -> list[tuple[str, str]]:
        """(label, HTML) facts of the page header."""
        return []

    def html_top(self) -> str:
        """HTML shown above the findings (charts, summary)."""
        return ""

    def html_details(self, layer: str | None) -> str:
        """HTML shown below the findings (``layer``: the layer of per-layer charts)."""
        return ""


def section_for(report: Report) -> Section:
    """The section of ``report``'s result type (its module imported on first use)."""
    result_type = type(report.result)
    if result_type not in SECTIONS and result_type.__name__ in SECTION_MODULES:
        importlib.import_module(SECTION_MODULES[result_type.__name__])
    return SECTIONS.get(result_type, Section)(report)
