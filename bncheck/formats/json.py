"""JSON, exactly the contract's shape (``schema_version`` 1)."""

from __future__ import annotations

import json

from bncheck.report.report import Report


def render(report: Report, **_: object) -> str:
    return report.to_json(indent=2) + "\n"


def combine(texts: list[str], reports: list[Report]) -> str:
    """Several reports: ``{"passed": all passed, "reports": [report, ...]}`` (each one the
    contract's shape)."""
    body = {"passed": all(r.passed for r in reports), "reports": [json.loads(text) for text in texts]}
    return json.dumps(body, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
