"""JSON, exactly the contract's shape (``schema_version`` 1)."""

from __future__ import annotations

import json

from bncheck._version import __version__
from bncheck.report.report import Report
from bncheck.report.schema import SCHEMA_VERSION


def render(report: Report, **_: object) -> str:
    return report.to_json(indent=2) + "\n"


def combine(texts: list[str], reports: list[Report]) -> str:
    """Several reports (``audit A B ...``): ``{"schema_version", "tool", "kind": "reports",
    "passed": all passed, "reports": [report, ...]}``, each one the contract's shape; the first
    keys say what the document is, so that a reader (``bncheck report``, ``diff``,
    ``--baseline``) can tell it from one report and say how to take one out."""
    body = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "bncheck", "version": __version__},
        "kind": "reports",
        "passed": all(r.passed for r in reports),
        "reports": [json.loads(text) for text in texts],
    }
    return json.dumps(body, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
