"""Saved JSON reports read back into :class:`~bncheck.report.report.Report` objects, so that
``bncheck report RUN.json`` renders them in any format, ``--baseline`` compares with them and
``bncheck diff`` compares two of them, all without running the model again.

``report_from_dict(report.to_dict())`` gives back a report whose ``to_dict()`` is the same
(the layers carry no arrays: what the JSON holds is what there is).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bncheck.backends.interface import ModelInfo
from bncheck.errors import UsageError
from bncheck.layer import BNLayer
from bncheck.report.report import Report
from bncheck.rules.finding import Finding, Severity

#: Top-level keys that Report builds itself; every other key is an extra and kept as it is.
CORE_KEYS = ("schema_version", "tool", "command", "model", "layers", "findings", "summary", "notes")

#: Layer keys that map onto BNLayer fields (the rest: drift, fold... go to layer_extras).
_LAYER_FIELDS = (
    "name", "kind", "num_features", "eps", "momentum", "producer", "foldable", "producer_kind",
    "fold_reason", "affine", "uses_running_stats", "num_batches_tracked", "training",
    "momentum_convention", "assumed", "notes",
)  # fmt: skip


def report_from_dict(data: dict[str, Any], *, source: str = "the report") -> Report:
    """A :class:`Report` from the parsed JSON of a report. Raises :class:`UsageError` naming
    ``source`` and the first problem when ``data`` is not a valid bncheck report."""
    from bncheck.report.schema import problems

    if not isinstance(data, dict) or "schema_version" not in data or not isinstance(data.get("tool"), dict):
        raise UsageError(f"{source} is not a bncheck JSON report (make one with --format json).")
    version = data["schema_version"]
    if isinstance(version, int) and version > 1:
        raise UsageError(
            f"{source} has schema_version {version}, newer than this bncheck reads (1); upgrade bncheck."
        )
    found = problems(data)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise UsageError(f"{source} is not a valid bncheck report: {found[0]}{more}.")
    model = data["model"]
    info = ModelInfo(
        path=model["path"],
        format=model["format"],
        sha256=model["sha256"],
        op_count=int(model.get("op_count", 0)),
        notes=list(model.get("notes", [])),
    )
    layers: list[BNLayer] = []
    layer_extras: dict[str, dict[str, Any]] = {}
    for item in data["layers"]:
        fields = {key: item[key] for key in _LAYER_FIELDS if key in item}
        fields["assumed"] = list(fields.get("assumed", []))
        fields["notes"] = list(fields.get("notes", []))
        layers.append(BNLayer(**fields))
        rest = {key: value for key, value in item.items() if key not in _LAYER_FIELDS}
        if rest:
            layer_extras[item["name"]] = rest
    findings = [
        Finding(
            rule=f["rule"],
            severity=Severity(f["severity"]),
            layer=f["layer"],
            message=f["message"],
            details=dict(f["details"]),
            baseline=f.get("baseline"),
        )
        for f in data["findings"]
    ]
    report = Report(
        command=data["command"],
        model=info,
        layers=layers,
        findings=findings,
        fail_on=data["summary"]["fail_on"],
        layer_extras=layer_extras,
        extras={key: value for key, value in data.items() if key not in CORE_KEYS},
        notes=list(data.get("notes", [])),
    )
    #: where it came from and which bncheck wrote it (not serialised again)
    report.origin = {"source": source, "tool_version": data["tool"].get("version")}
    return report


def read_json(path: str | Path, *, what: str = "report") -> Any:
    """Parse a JSON file, with one-sentence errors for a missing, unreadable or invalid file."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} file {path} does not exist.")
    if path.is_dir():
        raise UsageError(f"{what} file {path} is a folder; pass a JSON report file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not a JSON text file (make a report with --format json).") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror}).") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "pass a report written with --format json."
        ) from exc


def load_report(path: str | Path) -> Report:
    """Read a JSON report written by ``--format json`` (or :meth:`Report.to_json`)."""
    return report_from_dict(read_json(path), source=str(path))
