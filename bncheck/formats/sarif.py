"""SARIF 2.1.0 for GitHub code scanning and other SARIF viewers.

One run; the driver lists every rule of the registry with its four-part documentation as
help text; each finding is a result located in the model file (a physical location: models
are binary, so the region is line 1, which GitHub requires) with the BN layer as a logical
location. ``partialFingerprints`` identify a finding by rule, layer and model path, so an
alert stays the same alert across runs. With ``--baseline``, results carry SARIF's own
``baselineState`` (new / updated / unchanged).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import quote

from bncheck._version import __version__
from bncheck.report.report import Report, finite
from bncheck.rules import REGISTRY
from bncheck.rules.finding import Finding

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
LEVELS = {"error": "error", "warning": "warning", "info": "note"}
BASELINE_STATES = {"new": "new", "worse": "updated", "existing": "unchanged"}
FINGERPRINT_KEY = "bncheck/v1"


def _quote(path: str) -> str:
    """``path`` percent-encoded; a file name that is not UTF-8 (surrogate-escaped by Python)
    keeps its own bytes (``%FF``), so the URI names the file that was read."""
    return quote(path, errors="surrogateescape")


def artifact_location(path: str) -> dict[str, Any] | None:
    """A SARIF artifactLocation for the model path: relative paths stay relative to the
    checkout (``%SRCROOT%``, what GitHub matches against the repository), absolute ones become
    ``file://`` URIs; in-memory models have none."""
    if not path or path.startswith("<"):
        return None
    windows = PureWindowsPath(path)
    if windows.drive:
        return {"uri": "file:///" + _quote(windows.as_posix())}
    posix = PurePosixPath(path.replace("\\", "/"))
    if posix.is_absolute():
        return {"uri": "file://" + _quote(str(posix))}
    parts = [p for p in posix.parts if p != "."]
    return {"uri": _quote("/".join(parts)), "uriBaseId": "%SRCROOT%"}


def _rule_descriptor(rule) -> dict[str, Any]:
    markdown = "\n\n".join(
        [
            f"**{rule.code} {rule.name}** (default severity: {rule.severity.value})",
            rule.summary,
            "## What it does\n\n" + rule.what,
            "## Why is this bad?\n\n" + rule.why,
            "## Example\n\n" + rule.example,
            "## How to fix\n\n" + rule.fix,
        ]
    )
    descriptor: dict[str, Any] = {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.what},
        "help": {"text": rule.documentation(), "markdown": markdown},
        "defaultConfiguration": {"level": LEVELS[rule.severity.value]},
        "properties": {"tags": ["batch-norm", rule.phase], "precision": "high"},
    }
    if rule.thresholds:
        descriptor["properties"]["thresholds"] = dict(rule.thresholds)
    return descriptor


def fingerprint(report: Report, finding: Finding) -> str:
    key = "\x1f".join([finding.rule, finding.layer or "", report.model.path])
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()  # any name hashes


def _result(report: Report, finding: Finding, index: dict[str, int], artifact: dict[str, Any] | None) -> dict[str, Any]:
    text = f"{finding.layer}: {finding.message}" if finding.layer else finding.message
    location: dict[str, Any] = {}
    if artifact is not None:
        location["physicalLocation"] = {"artifactLocation": {**artifact, "index": 0}, "region": {"startLine": 1}}
    if finding.layer is not None:
        location["logicalLocations"] = [
            {"name": finding.layer, "fullyQualifiedName": finding.layer, "kind": "module"}
        ]
    result: dict[str, Any] = {
        "ruleId": finding.rule,
        "level": LEVELS[finding.severity.value],
        "kind": "fail",
        "message": {"text": text},
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(report, finding)},
        "properties": {"severity": finding.severity.value, "layer": finding.layer, "details": finite(finding.details)},
    }
    if finding.rule in index:
        result["ruleIndex"] = index[finding.rule]
    if location:
        result["locations"] = [location]
    if finding.baseline in BASELINE_STATES:
        result["baselineState"] = BASELINE_STATES[finding.baseline]
    return result


def to_sarif(report: Report) -> dict[str, Any]:
    """The report as a SARIF 2.1.0 log (a dict ready for ``json.dumps``)."""
    rules = [REGISTRY[code] for code in sorted(REGISTRY)]
    index = {rule.code: i for i, rule in enumerate(rules)}
    artifact = artifact_location(report.model.path)
    run_info = report.run or {}
    invocation: dict[str, Any] = {"executionSuccessful": True, "exitCode": report.exit_code}
    if run_info.get("command_line"):
        invocation["commandLine"] = run_info["command_line"]
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "bncheck",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [_rule_descriptor(rule) for rule in rules],
            }
        },
        "invocations": [invocation],
        "results": [_result(report, f, index, artifact) for f in report.findings],
        "columnKind": "unicodeCodePoints",
        "properties": {"command": report.command, "summary": report.summary(), "model_format": report.model.format},
    }
    if artifact is not None:
        entry: dict[str, Any] = {"location": artifact, "roles": ["analysisTarget"]}
        if report.model.sha256:
            entry["hashes"] = {"sha-256": report.model.sha256}
        run["artifacts"] = [entry]
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}


def render(report: Report, **_: object) -> str:
    return json.dumps(to_sarif(report), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def combine(texts: list[str], reports: list[Report]) -> str:
    """Several reports as one SARIF log with ONE run (code scanning refuses several runs of one
    tool in one category): every model an artifact, every report an invocation, the results
    concatenated with their artifact index moved to their model's."""
    runs = [json.loads(text)["runs"][0] for text in texts]
    merged = dict(runs[0])
    merged["invocations"], merged["results"], merged["artifacts"] = [], [], []
    for run in runs:
        offset = len(merged["artifacts"])
        for result in run["results"]:
            for location in result.get("locations", []):
                artifact = location.get("physicalLocation", {}).get("artifactLocation")
                if artifact is not None and "index" in artifact:
                    artifact["index"] += offset
            merged["results"].append(result)
        merged["artifacts"].extend(run.get("artifacts", []))
        merged["invocations"].extend(run["invocations"])
    merged["properties"] = {"command": runs[0]["properties"]["command"], "reports": [run["properties"] for run in runs]}
    if not merged["artifacts"]:
        del merged["artifacts"]
    return json.dumps({"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [merged]}, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
