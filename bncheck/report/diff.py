"""``bncheck diff A.json B.json``: what changed between two runs of the same command (last
release against candidate, yesterday's data against today's).

Findings are matched by (rule, layer) as for baselines (:mod:`bncheck.report.baseline`): each is new,
worse, better, unchanged or resolved. Layers are matched by name; for drift reports the
per-layer figures (mean |z|, mean |r|, score) are compared. The diff "passes" when B has no
new or worse finding at or above ``fail_on`` — the same verdict as
``bncheck report B.json --baseline A.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from bncheck.errors import UsageError
from bncheck.report import rendering
from bncheck.report.baseline import DEFAULT_TOLERANCE, FIGURES, compare, match
from bncheck.report.gate import Gate
from bncheck.report.report import Report, finite
from bncheck.report.results import DriftResult, FoldResult
from bncheck.rules.context import Verification
from bncheck.rules.finding import FAIL_ON, Finding, Severity, reaches

STATES = ("new", "worse", "better", "unchanged", "resolved")


@dataclass
class FindingChange:
    state: str
    rule: str
    layer: str | None
    severity_a: str | None
    severity_b: str | None
    message: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state, "rule": self.rule, "layer": self.layer, "severity_a": self.severity_a,
            "severity_b": self.severity_b, "message": self.message, "reason": self.reason,
        }  # fmt: skip


@dataclass
class LayerChange:
    name: str
    #: "both", "added" (only in B) or "removed" (only in A)
    presence: str
    #: drift figures {"mean_z", "mean_r", "score"} in A and B (None where absent)
    a: dict[str, float | None] | None = None
    b: dict[str, float | None] | None = None

    def delta(self, key: str) -> float | None:
        if not self.a or not self.b:
            return None
        x, y = self.a.get(key), self.b.get(key)
        if x is None or y is None:
            return None
        return y - x

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "presence": self.presence, "a": self.a, "b": self.b}
        if self.a and self.b:
            out["delta"] = {key: self.delta(key) for key in ("mean_z", "mean_r", "score")}
        return out


@dataclass
class ReportDiff(Gate):
    a: Report
    b: Report
    a_name: str
    b_name: str
    fail_on: str
    findings: list[FindingChange] = field(default_factory=list)
    layers: list[LayerChange] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(1 for c in self.findings if c.state == state)

    def failing(self) -> list[FindingChange]:
        return [
            c for c in self.findings
            if c.state in ("new", "worse") and c.severity_b and reaches(Severity(c.severity_b), self.fail_on)
        ]  # fmt: skip

    def facts(self) -> list[tuple[str, str, str]]:
        """(what, in A, in B) for the run-level facts that differ or matter."""
        a, b = self.a, self.b
        rows = [
            ("model", a.model.path, b.model.path),
            ("model sha256", a.model.sha256[:12] or "-", b.model.sha256[:12] or "-"),
            ("verdict", "passed" if a.passed else "FAILED", "passed" if b.passed else "FAILED"),
            ("errors / warnings / infos", _counts(a), _counts(b)),
        ]
        da, db = a.data or {}, b.data or {}
        if da or db:
            rows.append(("data", f"{da.get('path', '-')} ({da.get('samples', '-')} samples)", f"{db.get('path', '-')} ({db.get('samples', '-')} samples)"))
        ra, rb = _drift_run(a), _drift_run(b)
        if ra.accuracy is not None or rb.accuracy is not None:
            rows.append(("accuracy", _pct(ra.accuracy), _pct(rb.accuracy)))
        if ra.first_drifting_layer or rb.first_drifting_layer:
            rows.append(("first drifting layer", ra.first_drifting_layer or "-", rb.first_drifting_layer or "-"))
        va, vb = _verification(a), _verification(b)
        if va or vb:
            rows.append(("verification max rel err", _num(va.max_rel_err if va else None), _num(vb.max_rel_err if vb else None)))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return finite(
            {
                "command": self.b.command,
                "a": {"path": self.a_name, "model": self.a.model.to_dict(), "summary": self.a.summary()},
                "b": {"path": self.b_name, "model": self.b.model.to_dict(), "summary": self.b.summary()},
                "same_model": bool(self.a.model.sha256) and self.a.model.sha256 == self.b.model.sha256,
                "counts": {state: self.count(state) for state in STATES},
                "findings": [c.to_dict() for c in self.findings],
                "layers": [c.to_dict() for c in self.layers],
                "fail_on": self.fail_on,
                "passed": self.passed,
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_frame(self):
        """One row per finding change, as pandas."""
        import pandas as pd

        columns = ["state", "rule", "layer", "severity_a", "severity_b", "message", "reason"]
        return pd.DataFrame([c.to_dict() for c in self.findings], columns=columns)

    def render(self, format: str = "table", *, color: bool = False, width: int | None = None) -> str:
        if format == "json":
            return self.to_json() + "\n"
        options = {"color": color, "width": width} if format == "table" else {}
        return rendering.view("diff", format)(self, **options)


def _counts(report: Report) -> str:
    s = report.summary()
    return f"{s['errors']} / {s['warnings']} / {s['infos']}"


def _pct(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def _num(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "-"


def _drift_run(report: Report) -> DriftResult:
    """The drift result of ``report`` (an empty one for other commands)."""
    if isinstance(report.result, DriftResult):
        return report.result
    return DriftResult(data=None, layers={}, first_drifting_layer=None)


def _verification(report: Report) -> Verification | None:
    return report.result.verification if isinstance(report.result, FoldResult) else None


def _drift_figures(report: Report, name: str) -> dict[str, float | None] | None:
    d = report.layer_drift(name)
    if not d:
        return None
    return {"mean_z": d["mean_shift"]["mean"], "mean_r": d["var_log_ratio"]["mean"], "score": d.get("score")}


def _better(old: Finding, new: Finding, tolerance: float) -> str | None:
    """Why ``new`` is better than ``old`` (lower severity, or every figure smaller beyond the
    tolerance), or None."""
    if new.severity.rank < old.severity.rank:
        return f"severity {old.severity.value} → {new.severity.value}"
    figures = FIGURES.get(new.rule)
    if figures is None:
        return None
    was, now = figures(old.details), figures(new.details)
    shared = [k for k in now if k in was and math.isfinite(now[k]) and math.isfinite(was[k])]
    if shared and all(now[k] < was[k] - abs(was[k]) * tolerance for k in shared):
        return "; ".join(f"{k} {was[k]:.3g} → {now[k]:.3g}" for k in shared)
    return None


def diff_reports(
    a: Report, b: Report, *, a_name: str = "A", b_name: str = "B", fail_on: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ReportDiff:  # fmt: skip
    """Compare run ``a`` (before) with run ``b`` (after)."""
    if a.command != b.command:
        article = "an" if b.command[:1] in "aeiou" else "a"
        raise UsageError(f"{a_name} is a `{a.command}` report and {b_name} {article} `{b.command}` report; diff two runs of the same command.")
    result = ReportDiff(a=a, b=b, a_name=a_name, b_name=b_name, fail_on=fail_on or b.fail_on)
    pairs, resolved = match(a.findings, b.findings)
    for old, new in pairs:
        state, reason = compare(old, new, tolerance)
        if state == "existing":
            why = _better(old, new, tolerance)
            state, reason = ("better", why) if why else ("unchanged", "the same")
        result.findings.append(
            FindingChange(state, new.rule, new.layer, old.severity.value if old else None, new.severity.value, new.message, reason)
        )
    for old in resolved:
        result.findings.append(FindingChange("resolved", old.rule, old.layer, old.severity.value, None, old.message, f"not in {b_name}"))
    order = {state: i for i, state in enumerate(STATES)}
    result.findings.sort(key=lambda c: order[c.state])
    names_a = [layer.name for layer in a.layers]
    names_b = [layer.name for layer in b.layers]
    seen = set(names_b)
    for name in names_b:
        presence = "both" if name in set(names_a) else "added"
        result.layers.append(LayerChange(name, presence, _drift_figures(a, name) if presence == "both" else None, _drift_figures(b, name)))
    for name in names_a:
        if name not in seen:
            result.layers.append(LayerChange(name, "removed", _drift_figures(a, name), None))
    return result


def diff(a, b, *, fail_on: str | None = None, tolerance: float = DEFAULT_TOLERANCE) -> ReportDiff:
    """Python API: ``a`` and ``b`` are Reports or paths of JSON reports."""
    a_name = str(a) if not isinstance(a, Report) else "A"
    b_name = str(b) if not isinstance(b, Report) else "B"
    a = a if isinstance(a, Report) else Report.load(a)
    b = b if isinstance(b, Report) else Report.load(b)
    if fail_on is not None:
        if fail_on not in FAIL_ON:
            raise UsageError(f"fail-on {fail_on!r} must be one of: error, warning, info, never.")
    return diff_reports(a, b, a_name=a_name, b_name=b_name, fail_on=fail_on, tolerance=tolerance)
