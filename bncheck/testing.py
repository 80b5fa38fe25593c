"""Assertions on bncheck reports for a project's own tests, and the pytest plugin that offers
them as a fixture.

    from bncheck.testing import assert_passes, assert_no_findings

    def test_model_has_no_bn_drift():
        report = bncheck.drift("model.onnx", "data/production-sample")
        assert_passes(report)                           # the gate, as the exit code would say
        assert_no_findings(report, severity="warning")  # nothing at warning or above

A failing assertion raises :class:`AssertionError` whose message is the report's headline and
the table of the findings that made it fail (severity, rule, layer, message), not
``assert False``. Installed with bncheck, the plugin (entry point ``pytest11``, :mod:`bncheck.pytest_plugin`, which
imports pytest alone) gives tests the ``bncheck`` fixture: :class:`Checker`, the commands (``bncheck.audit(model)``,
``bncheck.drift(model, data)``...) with the assertions as methods, writing what
``fold``/``recalibrate`` write to the test's ``tmp_path``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bncheck.commands.audit import audit
from bncheck.commands.drift import drift
from bncheck.commands.fold import fold
from bncheck.commands.recalibrate import recalibrate
from bncheck.errors import UsageError
from bncheck.formats.common import headline
from bncheck.report.report import Report
from bncheck.rules.finding import FAIL_ON, Finding, Severity, reaches

#: width of the findings table in a failure message (pytest does not wrap it)
WIDTH = 120

__all__ = ["Checker", "assert_finding", "assert_no_findings", "assert_passes", "findings_table"]


def findings_table(report: Report, findings: Iterable[Finding] | None = None, *, width: int = WIDTH) -> str:
    """The headline and a plain-text table of ``findings`` (default: all of the report's)."""
    rows = list(report.findings if findings is None else findings)
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, no_color=True, force_terminal=False, soft_wrap=False)
    console.print(headline(report), highlight=False, markup=False, soft_wrap=True)
    if not rows:
        console.print("no findings", highlight=False)
        return buffer.getvalue().rstrip()
    table = Table(show_lines=False, expand=False)
    for column in ("severity", "rule", "layer", "message"):
        table.add_column(column, overflow="fold")
    for f in rows:
        table.add_row(f.severity.value, f.rule, f.layer or "(model)", f.message + (f" [{f.baseline}]" if f.baseline else ""))
    console.print(table)
    return buffer.getvalue().rstrip()


def _report(value: Any) -> Report:
    if not isinstance(value, Report):
        raise TypeError(f"expected a bncheck Report (from bncheck.audit/drift/fold/recalibrate), not {type(value).__name__}")
    return value


def _severity(value: str | Severity) -> Severity:
    try:
        return value if isinstance(value, Severity) else Severity(str(value).lower())
    except ValueError:
        raise UsageError(f"severity {value!r} must be one of: info, warning, error.") from None


def assert_passes(report: Report, *, fail_on: str | None = None) -> None:
    """The report's gate passes (exit code 0): no finding at or above ``fail_on`` (default: the
    report's own ``--fail-on``), baseline ``existing`` findings excepted."""
    report = _report(report)
    gate = fail_on or report.fail_on
    if gate not in FAIL_ON:
        raise UsageError(f"fail_on {gate!r} must be one of: {', '.join(FAIL_ON)}.")
    failing = [f for f in report.findings if reaches(f.severity, gate) and f.gating]
    if failing:
        raise AssertionError(f"bncheck gate failed (fail-on {gate}): {len(failing)} finding(s)\n{findings_table(report, failing)}")


def assert_no_findings(report: Report, *, severity: str | Severity = "info", rule: str | None = None, layer: str | None = None) -> None:
    """No finding at or above ``severity`` (optionally: of ``rule``, on ``layer``)."""
    report = _report(report)
    lowest = _severity(severity)
    found = [
        f for f in report.findings
        if f.severity.rank >= lowest.rank and (rule is None or f.rule == rule) and (layer is None or f.layer == layer)
    ]  # fmt: skip
    if found:
        what = " ".join(part for part in (f"at or above {lowest.value}", f"of rule {rule}" if rule else "", f"on layer {layer}" if layer else "") if part)
        raise AssertionError(f"{len(found)} bncheck finding(s) {what}\n{findings_table(report, found)}")


def assert_finding(report: Report, rule: str, *, layer: str | None = None, severity: str | Severity | None = None) -> Finding:
    """A finding of ``rule`` is there (on ``layer``, of ``severity``); returns the first."""
    report = _report(report)
    wanted = _severity(severity) if severity is not None else None
    for f in report.findings:
        if f.rule == rule and (layer is None or f.layer == layer) and (wanted is None or f.severity is wanted):
            return f
    where = f" on layer {layer}" if layer else ""
    raise AssertionError(f"no {rule} finding{where}{f' of severity {wanted.value}' if wanted else ''}\n{findings_table(report)}")


class Checker:
    """What the ``bncheck`` fixture gives a test: the commands, with outputs in ``tmp_path``,
    and the assertions."""

    assert_passes = staticmethod(assert_passes)
    assert_no_findings = staticmethod(assert_no_findings)
    assert_finding = staticmethod(assert_finding)
    findings_table = staticmethod(findings_table)

    def __init__(self, tmp_path: Path):
        self.tmp_path = Path(tmp_path)

    def audit(self, model: Any, **kwargs: Any) -> Report:
        return audit(model, **kwargs)

    def drift(self, model: Any, data: Any, **kwargs: Any) -> Report:
        return drift(model, data, **kwargs)

    def fold(self, model: Any, out: str | Path | None = None, **kwargs: Any) -> Report:
        return fold(model, out if out is not None else self._out(model, "folded"), **kwargs)

    def recalibrate(self, model: Any, data: Any, out: str | Path | None = None, **kwargs: Any) -> Report:
        return recalibrate(model, data, out if out is not None else self._out(model, "recalibrated"), **kwargs)

    def _out(self, model: Any, what: str) -> Path:
        name = Path(model).name if isinstance(model, (str, Path)) else "model.onnx"
        stem, dot, suffix = name.partition(".")
        return self.tmp_path / f"{stem}_{what}{dot}{suffix}"
