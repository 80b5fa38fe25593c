"""Saved JSON reports read back into :class:`~bncheck.report.report.Report` objects, so that
``bncheck report RUN.json`` renders them in any format, ``--baseline`` compares with them and
``bncheck diff`` compares two of them, all without running the model again.

``report_from_dict(report.to_dict())`` gives back a report whose ``to_dict()`` is the same
(the layers carry no arrays: what the JSON holds is what there is). The reading and checking
itself is in :mod:`bncheck.report.parse`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bncheck.report.parse import read_json
from bncheck.report.report import Report

__all__ = ["load_report", "read_json", "report_from_dict"]


def report_from_dict(data: dict[str, Any], *, source: str = "the report") -> Report:
    """A :class:`Report` from the parsed JSON of a report. Raises :class:`UsageError` naming
    ``source`` and the first problem when ``data`` is not a valid bncheck report."""
    return Report.from_dict(data, source=source)


def load_report(path: str | Path) -> Report:
    """Read a JSON report written by ``--format json`` (or :meth:`Report.to_json`)."""
    return Report.load(path)
