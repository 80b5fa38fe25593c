"""JSON, exactly the contract's shape (``schema_version`` 1)."""

from __future__ import annotations

from bncheck.report.report import Report


def render(report: Report, **_: object) -> str:
    return report.to_json(indent=2) + "\n"
