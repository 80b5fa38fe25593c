"""Per-command sections: the formats find a report's section by the type of its result (never
by the command's name), and every human-readable format places it."""

from __future__ import annotations

import pytest

from bncheck.formats.drift_section import DriftSection
from bncheck.formats.fold_section import FoldSection
from bncheck.formats.recalibrate_section import RecalibrationSection
from bncheck.formats.section import Section, section_for
from bncheck.report import Report

SECTIONS = {"audit_onnx": Section, "drift_shifted": DriftSection, "fold_onnx": FoldSection, "recalibrate_onnx": RecalibrationSection}


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_section_follows_the_result_type(sample_runs, name):
    report = Report.load(sample_runs[name].path)
    assert type(section_for(report)) is SECTIONS[name]
    report.command = "audit"  # the name is not what decides
    assert type(section_for(report)) is SECTIONS[name]


def test_fold_section_in_every_format(sample_runs):
    report = Report.load(sample_runs["fold_onnx"].path)
    section = section_for(report)
    lines = section.summary_lines()
    assert lines[0].startswith("verification: passed")
    assert lines[0] in report.render("table") and f"- {lines[0]}" in report.render("markdown")
    assert "<h2 id=\"fold\">Fold</h2>" in report.render("html")
    first = report.layers[0]
    assert section.fold_cell(first).startswith("folded")


def test_recalibration_section_in_every_format(sample_runs):
    report = Report.load(sample_runs["recalibrate_onnx"].path)
    rows = section_for(report).layer_rows()
    assert [r[0] for r in rows] == [layer.name for layer in report.layers]
    assert "Drift before -> after" in report.render("table")
    assert "### Recalibration" in report.render("markdown")
    assert "id=\"recalibration\"" in report.render("html")


def test_audit_reports_have_no_command_section(sample_runs):
    report = Report.load(sample_runs["audit_onnx"].path)
    section = section_for(report)
    assert section.summary_lines() == [] and section.table_parts() == [] and section.html_top() == ""
    assert section.fold_cell(report.layers[0]) is None
