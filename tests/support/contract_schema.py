"""The JSON report's schema for the tests: the published one (bncheck/report_schema.json, what
``bncheck schema`` prints) is the single source; this module only adds the checker the tests
call, with the cross-field rules a schema cannot state (summary counts, the verdict).

The contract allows additions, so objects accept extra properties; what it names must be
present with the stated type. ``drift`` (per layer) and ``data`` (top level) are optional and
checked when present.
"""

from __future__ import annotations

from typing import Any

from bncheck.report.schema import consistency_problems, load_schema

REPORT_SCHEMA: dict[str, Any] = load_schema()


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` or ``AssertionError`` unless ``report`` (the parsed
    JSON) has the published schema's shape and a consistent summary."""
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(REPORT_SCHEMA)
    jsonschema.Draft202012Validator(REPORT_SCHEMA).validate(report)
    problems = consistency_problems(report)
    assert not problems, "; ".join(problems)
