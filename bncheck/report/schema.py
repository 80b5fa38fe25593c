"""The published JSON Schema of the report (``bncheck/report_schema.json``, printed by
``bncheck schema``) and the cross-field rules a schema cannot state.

The schema file is the single source: the tests validate every command's output against it,
and :mod:`bncheck.report.io` checks a saved report with it before rendering it again.
Validating against the full schema needs ``jsonschema`` (in the ``test`` extra); without it,
:func:`problems` still checks the required structure by hand.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

#: Version of the JSON report shape (2: BN201/BN301 output comparisons of any structure, BN301
#: against DATA's own statistics with a noise floor; see CHANGELOG.md)
SCHEMA_VERSION = 3

SCHEMA_RESOURCE = "report_schema.json"

_RANK = {"info": 1, "warning": 2, "error": 3}
_FAIL_ON = {"error": 3, "warning": 2, "info": 1, "never": None}


def schema_text() -> str:
    """The schema file as published (what ``bncheck schema`` prints)."""
    return resources.files("bncheck.report").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    return json.loads(schema_text())


def load_schema() -> dict[str, Any]:
    """The report schema as a dict (a fresh copy: callers may modify it)."""
    return json.loads(json.dumps(_schema()))


def consistency_problems(report: dict[str, Any]) -> list[str]:
    """What the schema cannot say: the summary counts match the findings, every finding names
    a known layer (or none), and ``passed`` agrees with ``fail_on``, the findings and, with a
    baseline, their baseline state."""
    out: list[str] = []
    summary, findings, layers = report["summary"], report["findings"], report["layers"]
    if summary["layers"] != len(layers):
        out.append(f"summary.layers is {summary['layers']} but there are {len(layers)} layers")
    for key, severity in (("errors", "error"), ("warnings", "warning"), ("infos", "info")):
        actual = sum(f["severity"] == severity for f in findings)
        if summary[key] != actual:
            out.append(f"summary.{key} is {summary[key]} but {actual} finding(s) have severity {severity}")
    names = {layer["name"] for layer in layers}
    for i, f in enumerate(findings):
        if f["layer"] is not None and f["layer"] not in names:
            out.append(f"findings[{i}] names unknown layer {f['layer']!r}")
    threshold = _FAIL_ON[summary["fail_on"]]
    failing = threshold is not None and any(
        _RANK[f["severity"]] >= threshold and f.get("baseline") != "existing" for f in findings
    )
    if summary["passed"] is failing:
        out.append(f"summary.passed is {summary['passed']} but fail_on {summary['fail_on']!r} and the findings say {not failing}")
    return out


def problems(report: Any) -> list[str]:
    """Every way ``report`` (parsed JSON) departs from the schema, as ``path: message`` lines;
    empty when it is a valid report. Uses jsonschema when installed."""
    try:
        import jsonschema
    except ImportError:
        found = _structural_problems(report)
    else:
        validator = jsonschema.Draft202012Validator(_schema())
        found = [
            f"{_path(error.absolute_path)}: {error.message}"
            for error in sorted(validator.iter_errors(report), key=lambda e: list(map(str, e.absolute_path)))
        ]
    if found:
        return found
    return consistency_problems(report)


def _path(parts) -> str:
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _item_problems(report: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The layers and findings arrays: each an object with its required keys."""
    out: list[str] = []
    for name, item_schema in (("layers", schema["$defs"]["layer"]), ("findings", schema["$defs"]["finding"])):
        items = report[name]
        if not isinstance(items, list):
            out.append(f"$.{name}: not an array")
            continue
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                out.append(f"$.{name}[{i}]: not an object")
                continue
            out += [f"$.{name}[{i}]: missing {key!r}" for key in item_schema["required"] if key not in item]
    return out


def _structural_problems(report: Any) -> list[str]:
    """The required fields and their types, checked by hand (no jsonschema installed)."""
    schema = _schema()
    if not isinstance(report, dict):
        return ["$: not a JSON object"]
    out = [f"$: missing {key!r}" for key in schema["required"] if key not in report]
    if out:
        return out
    if report["schema_version"] not in schema["properties"]["schema_version"]["enum"]:
        out.append(f"$.schema_version: {report['schema_version']!r} is not one of {schema['properties']['schema_version']['enum']}")
    if not isinstance(report["tool"], dict) or report["tool"].get("name") != "bncheck":
        out.append("$.tool.name: not 'bncheck'")
    if report["command"] not in schema["properties"]["command"]["enum"]:
        out.append(f"$.command: {report['command']!r} is not a bncheck command")
    checks = (
        ("model", schema["properties"]["model"], report["model"]),
        ("summary", schema["properties"]["summary"], report["summary"]),
    )
    for name, sub, value in checks:
        if not isinstance(value, dict):
            out.append(f"$.{name}: not an object")
            continue
        out += [f"$.{name}: missing {key!r}" for key in sub["required"] if key not in value]
    out += _item_problems(report, schema)
    if not out:
        severities = set(_RANK)
        for i, f in enumerate(report["findings"]):
            if f["severity"] not in severities:
                out.append(f"$.findings[{i}].severity: {f['severity']!r} is not one of error, warning, info")
        if report["summary"]["fail_on"] not in _FAIL_ON:
            out.append(f"$.summary.fail_on: {report['summary']['fail_on']!r} is not one of error, warning, info, never")
    return out
