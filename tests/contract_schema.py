"""The JSON report of /work/shared/CONTRACT.md as a JSON Schema (draft 2020-12), and a checker
for the cross-field rules a schema cannot state (summary counts, the verdict).

The contract allows additions, so objects accept extra properties; what it names must be
present with the stated type. ``drift`` (per layer) and ``data`` (top level) are optional
here and checked when present.
"""

from __future__ import annotations

from typing import Any

NUMBER_OR_NULL = {"type": ["number", "null"]}
SEVERITIES = ["error", "warning", "info"]
FAIL_ON = ["error", "warning", "info", "never"]
COMMANDS = ["audit", "drift", "fold", "recalibrate"]

_STAT = {
    "type": "object",
    "required": ["mean", "max", "channel"],
    "properties": {
        "mean": {"type": "number", "minimum": 0},
        "max": {"type": "number", "minimum": 0},
        "channel": {"type": "integer", "minimum": 0},
    },
}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "bncheck report, schema_version 1",
    "type": "object",
    "required": ["schema_version", "tool", "command", "model", "layers", "findings", "summary"],
    "properties": {
        "schema_version": {"const": 1},
        "tool": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {"name": {"const": "bncheck"}, "version": {"type": "string", "minLength": 1}},
        },
        "command": {"enum": COMMANDS},
        "model": {
            "type": "object",
            "required": ["path", "format", "sha256"],
            "properties": {
                "path": {"type": "string", "minLength": 1},
                "format": {"type": "string", "minLength": 1},
                "sha256": {"type": "string", "pattern": "^([0-9a-f]{64})?$"},
            },
        },
        "layers": {"type": "array", "items": {"$ref": "#/$defs/layer"}},
        "findings": {"type": "array", "items": {"$ref": "#/$defs/finding"}},
        "summary": {
            "type": "object",
            "required": ["layers", "errors", "warnings", "infos", "fail_on", "passed"],
            "properties": {
                "layers": {"type": "integer", "minimum": 0},
                "errors": {"type": "integer", "minimum": 0},
                "warnings": {"type": "integer", "minimum": 0},
                "infos": {"type": "integer", "minimum": 0},
                "fail_on": {"enum": FAIL_ON},
                "passed": {"type": "boolean"},
            },
        },
        "data": {
            "type": "object",
            "required": ["path", "samples", "batch_size"],
            "properties": {
                "path": {"type": "string"},
                "samples": {"type": "integer", "minimum": 0},
                "batch_size": {"type": "integer", "minimum": 1},
            },
        },
    },
    "$defs": {
        "layer": {
            "type": "object",
            "required": ["name", "kind", "num_features", "eps", "momentum", "producer", "foldable"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "kind": {"type": "string", "minLength": 1},
                "num_features": {"type": "integer", "minimum": 0},
                "eps": NUMBER_OR_NULL,
                "momentum": NUMBER_OR_NULL,
                "producer": {"type": ["string", "null"]},
                "foldable": {"type": ["boolean", "null"]},
                "drift": {
                    "type": "object",
                    "required": ["samples", "elements", "mean_shift", "var_log_ratio", "score"],
                    "properties": {
                        "samples": {"type": "integer", "minimum": 0},
                        "elements": {"type": "integer", "minimum": 0},
                        "mean_shift": _STAT,
                        "var_log_ratio": _STAT,
                        "score": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
            },
        },
        "finding": {
            "type": "object",
            "required": ["rule", "severity", "layer", "message", "details"],
            "properties": {
                "rule": {"type": "string", "pattern": "^BN[0-9]{3}$"},
                "severity": {"enum": SEVERITIES},
                "layer": {"type": ["string", "null"]},
                "message": {"type": "string", "minLength": 1},
                "details": {"type": "object"},
            },
        },
    },
}

_RANK = {"info": 1, "warning": 2, "error": 3}


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` or ``AssertionError`` unless ``report`` (the parsed
    JSON) has the contract's shape and a consistent summary."""
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(REPORT_SCHEMA)
    jsonschema.Draft202012Validator(REPORT_SCHEMA).validate(report)
    summary, findings = report["summary"], report["findings"]
    assert summary["layers"] == len(report["layers"]), "summary.layers != number of layers"
    for key, severity in (("errors", "error"), ("warnings", "warning"), ("infos", "info")):
        assert summary[key] == sum(f["severity"] == severity for f in findings), f"summary.{key} is wrong"
    names = [layer["name"] for layer in report["layers"]]
    for f in findings:
        assert f["layer"] is None or f["layer"] in names, f"finding on unknown layer {f['layer']!r}"
    fail_on = summary["fail_on"]
    failing = fail_on != "never" and any(_RANK[f["severity"]] >= _RANK[fail_on] for f in findings)
    assert summary["passed"] is (not failing), "summary.passed disagrees with fail_on and findings"
