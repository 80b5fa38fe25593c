"""Reading a saved JSON report: the file (one-sentence errors), the checks against the
published schema, and the parts a report is made of (model, layers, findings). The
:class:`~bncheck.report.report.Report` puts them together (``Report.from_dict``); baselines
read only the findings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bncheck.backends.interface import ModelInfo
from bncheck.errors import UsageError
from bncheck.layer import BNLayer
from bncheck.report.schema import SCHEMA_VERSION, problems
from bncheck.rules.finding import Finding, Severity

#: Layer keys that map onto BNLayer fields (the rest: drift, fold... belong to the result).
LAYER_FIELDS = (
    "name", "kind", "num_features", "eps", "momentum", "producer", "foldable", "producer_kind",
    "fold_reason", "affine", "uses_running_stats", "num_batches_tracked", "training",
    "momentum_convention", "assumed", "notes",
)  # fmt: skip


def check_report(data: Any, source: str) -> dict[str, Any]:
    """``data`` when it is a valid bncheck report; else :class:`UsageError` naming ``source``
    and the first problem."""
    several = isinstance(data, dict) and isinstance(data.get("reports"), list) and data.get("kind") in ("reports", None)
    if several and "passed" in data:  # audit A B ... --format json: one document of several reports
        raise UsageError(
            f"{source} holds {len(data['reports'])} reports (one per model of a run on several models), not one; "
            "take one out (jq '.reports[0]') or write each model's report with its own --format json run."
        )
    if not isinstance(data, dict) or "schema_version" not in data or not isinstance(data.get("tool"), dict):
        raise UsageError(f"{source} is not a bncheck JSON report (make one with --format json).")
    if data.get("kind") == "ranking" and isinstance(data.get("reports"), list):
        raise UsageError(
            f"{source} is a ranking of {len(data['reports'])} models (bncheck drift M1 M2 ... DATA), not one report; "
            "its reports are under \"reports\" (e.g. jq '.reports[0]'), or run bncheck drift MODEL DATA --format json."
        )
    version = data["schema_version"]
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise UsageError(
            f"{source} has schema_version {version}, newer than this bncheck reads ({SCHEMA_VERSION}); upgrade bncheck."
        )
    found = problems(data)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        first = found[0] if len(found[0]) <= 240 else found[0][:240] + "..."  # messages quote the bad value
        raise UsageError(f"{source} is not a valid bncheck report: {first}{more}.")
    return data


def model_info(model: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        path=model["path"],
        format=model["format"],
        sha256=model["sha256"],
        op_count=int(model.get("op_count", 0)),
        notes=list(model.get("notes", [])),
    )


def layers_of(items: list[dict[str, Any]]) -> tuple[list[BNLayer], dict[str, dict[str, Any]]]:
    """The BN layers of a report's ``layers`` list, and per layer name the keys beyond them."""
    layers: list[BNLayer] = []
    rest: dict[str, dict[str, Any]] = {}
    for item in items:
        fields = {key: item[key] for key in LAYER_FIELDS if key in item}
        fields["assumed"] = list(fields.get("assumed", []))
        fields["notes"] = list(fields.get("notes", []))
        layers.append(BNLayer(**fields))
        extra = {key: value for key, value in item.items() if key not in LAYER_FIELDS}
        if extra:
            rest[item["name"]] = extra
    return layers, rest


def findings_of(items: list[dict[str, Any]]) -> list[Finding]:
    return [
        Finding(
            rule=f["rule"],
            severity=Severity(f["severity"]),
            layer=f["layer"],
            message=f["message"],
            details=dict(f["details"]),
            baseline=f.get("baseline"),
        )
        for f in items
    ]

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
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "pass a report written with --format json."
        ) from exc
    except RecursionError as exc:  # arrays or objects nested thousands deep
        raise UsageError(f"{path} nests JSON too deeply to be a {what}; pass a report written with --format json.") from exc
    except ValueError as exc:  # an integer literal longer than Python converts (sys.get_int_max_str_digits)
        raise UsageError(
            f"{path} holds an integer of more than {sys.get_int_max_str_digits():,} digits, which no {what} "
            "has; pass a report written with --format json."
        ) from exc
    if _depth(data) > MAX_DEPTH:
        raise UsageError(f"{path} nests JSON too deeply to be a {what}; pass a report written with --format json.")
    return data


#: The deepest nesting a JSON input may have. bncheck's own reports nest less than ten levels;
#: a hostile one nested hundreds deep would exhaust the stack of whatever reads it next.
MAX_DEPTH = 64


def _depth(value: Any) -> int:
    """How deeply ``value`` nests lists and dicts (iterative: no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
