"""GitLab Code Quality: a JSON array of issues (``artifacts:reports:codequality``), one per
finding, shown in merge requests. Fields: ``description``, ``check_name`` (the rule code),
``fingerprint`` (stable across runs: sha256 of the command, model path, rule and layer, so
GitLab tells new issues from fixed ones), ``severity`` (error -> critical, warning -> major,
info -> info), ``location.path`` and ``location.lines.begin`` (1: a model has no lines)."""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath
from typing import Any

from bncheck.report.report import Report
from bncheck.rules import REGISTRY

SEVERITIES = {"error": "critical", "warning": "major", "info": "info"}


def issues(report: Report) -> list[dict[str, Any]]:
    path = PurePosixPath(str(report.model.path or "model").replace("\\", "/")).as_posix()
    out, seen = [], {}
    for f in report.findings:
        key = "\0".join(["bncheck", report.command, path, f.rule, f.layer or ""])
        seen[key] = seen.get(key, 0) + 1  # the same rule twice on one layer: still unique
        fingerprint = hashlib.sha256(f"{key}\0{seen[key]}".encode("utf-8", "surrogatepass")).hexdigest()
        rule = REGISTRY.get(f.rule)
        issue: dict[str, Any] = {
            "type": "issue",
            "engine_name": "bncheck",
            "check_name": f.rule,
            "description": f"{f.rule} {f.layer or '(model)'}: {f.message}",
            "categories": ["Bug Risk"],
            "fingerprint": fingerprint,
            "severity": SEVERITIES[f.severity.value],
            "location": {"path": path, "lines": {"begin": 1}},
        }
        if rule is not None:
            issue["content"] = {"body": f"{rule.summary}\n\n{rule.fix}"}
        out.append(issue)
    return out


def render(report: Report, **_: object) -> str:
    return json.dumps(issues(report), indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def combine(texts: list[str], reports: list[Report]) -> str:
    """Several reports: one array of every report's issues."""
    return json.dumps([issue for text in texts for issue in json.loads(text)], indent=2, allow_nan=False, ensure_ascii=False) + "\n"
