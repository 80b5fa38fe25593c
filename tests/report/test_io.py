"""``bncheck report RUN.json``: a saved JSON report loads back into the same Report
(``report_io``), renders in every format without running the model, re-judges with --fail-on,
and bad inputs exit 2 with one sentence."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
from support.reports_support import invoke

from bncheck.report.io import load_report, report_from_dict
from bncheck.report.report import Report
from bncheck.report.schema import SCHEMA_VERSION

NAMES = ["audit_onnx", "audit_broken", "drift_shifted", "drift_csv", "fold_onnx", "recalibrate_onnx"]
FORMATS = ["table", "json", "markdown", "junit", "sarif", "html"]


def _run(sample_runs, name):
    if name not in sample_runs:
        pytest.skip("needs torch")
    return sample_runs[name]


def _one_error_line(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "unexpected" not in lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_gives_the_same_json(sample_runs, name):
    run = _run(sample_runs, name)
    report = load_report(run.path)
    assert isinstance(report, Report)
    assert report.to_dict() == run.data
    assert report.passed is run.data["summary"]["passed"] and report.exit_code == run.exit_code
    assert Report.from_dict(run.data).to_dict() == run.data
    assert report.origin == {"source": str(run.path), "tool_version": run.data["tool"]["version"]}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", NAMES)
def test_every_format_of_every_command(sample_runs, name, fmt, tmp_path):
    run = _run(sample_runs, name)
    out = tmp_path / f"out.{fmt}"
    result = invoke("report", run.path, "--format", fmt, "-o", out)
    assert result.exit_code == run.exit_code, result.output
    text = out.read_text(encoding="utf-8")
    report = run.data
    if fmt == "json":
        assert json.loads(text) == report
    elif fmt == "junit":
        root = ET.fromstring(text)
        suite = root.find("testsuite")
        failing = {f["layer"] or "(model)" for f in report["findings"] if f["severity"] == "error"}
        assert int(suite.get("failures")) == len(failing)
        assert int(suite.get("tests")) >= len(report["layers"])
        assert {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None} == failing
    elif fmt == "sarif":
        sarif = json.loads(text)
        assert sarif["version"] == "2.1.0"
        assert len(sarif["runs"][0]["results"]) == len(report["findings"])
    elif fmt == "html":
        assert text.startswith("<!DOCTYPE html>") and ("PASSED" if run.exit_code == 0 else "FAILED") in text
    elif fmt == "markdown":
        assert text.startswith(f"## bncheck {report['command']}: ")
    else:
        assert f"bncheck {report['command']} " in text
    for f in report["findings"]:
        if fmt in ("markdown", "html", "sarif"):
            assert f["rule"] in text


def test_format_from_the_output_extension(sample_runs, tmp_path):
    run = sample_runs["drift_shifted"]
    for suffix, marker in ((".html", "<!DOCTYPE html>"), (".sarif", '"version": "2.1.0"'), (".xml", "<testsuites"), (".md", "## bncheck")):
        out = tmp_path / f"r{suffix}"
        assert invoke("report", run.path, "-o", out).exit_code == 1
        assert marker in out.read_text(encoding="utf-8")


def test_fail_on_rejudges_the_saved_run(sample_runs):
    run = sample_runs["drift_csv"]
    severities = {f["severity"] for f in run.data["findings"]}
    assert "warning" in severities or "error" in severities
    assert invoke("report", run.path, "--fail-on", "never").exit_code == 0
    assert invoke("report", run.path, "--fail-on", "info").exit_code == 1
    # the saved fail-on applies when none is given
    assert invoke("report", run.path).exit_code == run.exit_code


def test_html_layer_choice(sample_runs, tmp_path):
    run = sample_runs["drift_shifted"]
    last = run.data["layers"][-1]["name"]
    out = tmp_path / "r.html"
    assert invoke("report", run.path, "-f", "html", "--layer", last, "-o", out).exit_code == 1
    opened = re.search(r'<tbody id="layer-(\d+)" class="grp open"(.*?)</tbody>', out.read_text(encoding="utf-8"), re.S)
    assert int(opened.group(1)) == len(run.data["layers"]) - 1 and 'id="channel-chart"' in opened.group(2)
    _one_error_line(invoke("report", run.path, "-f", "html", "--layer", "nope", "-o", tmp_path / "x.html"), "--layer", "nope")
    _one_error_line(invoke("report", run.path, "-f", "json", "--layer", last), "--layer", "--format html")
    assert not (tmp_path / "x.html").exists()


def test_html_without_channel_arrays_says_how_to_get_them(sample_runs, tmp_path):
    run = sample_runs["drift_csv"]
    out = tmp_path / "r.html"
    invoke("report", run.path, "-f", "html", "-o", out)
    text = out.read_text(encoding="utf-8")
    assert "does not carry per-channel figures" in text and "<code>--channels</code>" in text
    assert 'id="channel-chart"' not in text and 'id="drift-chart"' in text


def test_bad_inputs_exit_2_with_one_sentence(sample_runs, tmp_path):
    missing = tmp_path / "missing.json"
    _one_error_line(invoke("report", missing), "does not exist")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json", encoding="utf-8")
    _one_error_line(invoke("report", garbage), "not valid JSON", "line 1")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}), encoding="utf-8")
    _one_error_line(invoke("report", other), "not a bncheck JSON report")
    data = dict(sample_runs["audit_onnx"].data)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**data, "schema_version": SCHEMA_VERSION + 1}), encoding="utf-8")
    _one_error_line(invoke("report", newer), f"schema_version {SCHEMA_VERSION + 1}", "upgrade bncheck")
    edited = json.loads(json.dumps(data))
    edited["summary"]["layers"] = 99
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(edited), encoding="utf-8")
    _one_error_line(invoke("report", bad), "not a valid bncheck report", "summary.layers")
    _one_error_line(invoke("report", sample_runs["audit_onnx"].path, "--format", "pdf"), "'pdf' is not one of", "'table', 'json', 'markdown'")
    _one_error_line(invoke("report", sample_runs["audit_onnx"].path, "--fail-on", "sometimes"), "--fail-on")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x89PNG\x00\xff\xfe")
    _one_error_line(invoke("report", binary), "not a JSON text file")


def test_report_from_dict_rejects_non_reports():
    from bncheck.errors import UsageError

    for value in (None, [], {"schema_version": 1}, {"tool": {"name": "x"}}):
        with pytest.raises(UsageError):
            report_from_dict(value)
