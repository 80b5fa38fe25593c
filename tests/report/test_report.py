"""The Python API returns the reports the CLI renders, and they carry what a notebook needs:
``.passed``, ``.to_json()``, ``.to_frame()``, ``.findings_frame()``, ``.render()``, ``.save()``,
``.plot()``, ``.with_baseline()``; ``bncheck.load_report`` and ``bncheck.report.diff``. Also the
terminal's per-layer drift bars and sparkline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.reports_support import DIGITS, SAMPLES, invoke

import bncheck
from bncheck.formats.bars import bar, drift_level, sparkline


@pytest.fixture(scope="module")
def live():
    """``bncheck.commands.drift`` on the sample digits model and the shifted folder."""
    return bncheck.drift(SAMPLES / "digits_cnn.onnx", DIGITS / "shifted", options=bncheck.DriftOptions(channels=True))


def test_api_report_is_the_cli_report(live, sample_runs):
    cli = sample_runs["drift_shifted"].data
    api = json.loads(live.to_json())
    assert "run" not in api and "run" in cli  # the CLI adds how it was run; nothing else differs
    assert api == {key: value for key, value in cli.items() if key != "run"}
    assert live.passed is False and live.exit_code == 1
    summary = cli["summary"]
    assert repr(live) == (
        f"<Report drift {str(SAMPLES / 'digits_cnn.onnx')!r}: 3 layer(s), {summary['errors']} error(s), "
        f"{summary['warnings']} warning(s), {summary['infos']} info(s), FAILED>"
    )


def test_frames(live):
    frame = live.to_frame()
    assert list(frame["name"]) == [layer.name for layer in live.layers]
    assert {"drift.mean_shift.mean", "drift.var_log_ratio.mean", "drift.score", "findings", "worst_severity"} <= set(frame.columns)
    findings = live.findings_frame()
    assert list(findings.columns) == ["rule", "severity", "layer", "message", "baseline", "gating"]
    assert len(findings) == len(live.findings)
    assert findings["gating"].tolist() == [f.severity.value == "error" for f in live.findings]


def test_render_save_and_reload(live, tmp_path):
    for name in ("r.json", "r.md", "r.xml", "r.html", "r.sarif"):
        live.save(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 0
    assert bncheck.load_report(tmp_path / "r.json").to_dict() == json.loads(live.to_json())
    assert live.render("markdown") == (tmp_path / "r.md").read_text(encoding="utf-8")
    with pytest.raises(bncheck.BncheckError, match="cannot tell the report format"):
        live.save(tmp_path / "r.txt")
    live.save(tmp_path / "r.txt", format="table")
    assert "BN layers" in (tmp_path / "r.txt").read_text(encoding="utf-8")


def test_plot_figures(live):
    from matplotlib.figure import Figure

    assert isinstance(live.plot(), Figure)
    assert isinstance(live.plot(live.layers[-1].name), Figure)
    audit = bncheck.audit(SAMPLES / "digits_cnn.onnx")
    with pytest.raises(bncheck.BncheckError, match="no drift figures"):
        audit.plot()


def test_with_baseline_and_diff(live, sample_runs):
    judged = bncheck.load_report(sample_runs["drift_shifted"].path).with_baseline(live)
    assert judged.passed and {f.baseline for f in judged.findings} == {"existing"}
    d = bncheck.diff(sample_runs["drift_reference"].path, live)
    assert isinstance(d, bncheck.ReportDiff) and not d.passed and d.count("new") >= 3
    assert json.loads(d.to_json())["counts"]["new"] == d.count("new")
    with pytest.raises(bncheck.BncheckError, match="same command"):
        bncheck.diff(live, bncheck.audit(SAMPLES / "digits_cnn.onnx"))
    with pytest.raises(bncheck.BncheckError, match="baseline tolerance"):
        live.with_baseline(live, tolerance=-1)


def test_audit_and_fold_api(tmp_path):
    audit = bncheck.audit(SAMPLES / "digits_cnn.onnx")
    assert audit.passed and audit.to_frame().shape[0] == 3
    folded = bncheck.fold(SAMPLES / "digits_cnn.onnx", tmp_path / "f.onnx", timing=False)
    assert folded.passed and json.loads(folded.to_json())["verification"]["passed"] is True
    assert "Fold" in folded.render("html") and "verification: passed" in folded.render("html")


# ---------------------------------------------------------------------------- terminal bars


def test_bar_levels():
    assert bar(None, 0.5).plain == "-"
    low, warn, err, beyond = bar(0.2, 0.5), bar(0.7, 0.5), bar(1.4, 0.5), bar(5.0, 0.5)
    assert [t.spans[0].style for t in (low, warn, err, beyond)] == ["green", "yellow", "red", "red"]
    assert low.plain.index("│") == 6 and "│" not in err.plain  # the tick: where the error threshold is
    assert len({len(t.plain) for t in (low, warn, err, beyond)}) == 1
    assert beyond.plain.endswith("▶") and len(err.plain.rstrip()) > len(warn.plain.split("│")[0].rstrip())


def test_sparkline():
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([None, 1.0]) == " █"
    assert sparkline([0.0, 0.0]) == "▁▁"
    assert len(sparkline([float(i) for i in range(500)], width=80)) == 80


def test_drift_levels_use_the_recorded_thresholds(sample_runs):
    report = bncheck.load_report(sample_runs["drift_shifted"].path)
    layer = report.layers[-1].name
    d = report.layer_drift(layer)
    table = {"BN101": {"error": 0.5}, "BN102": {"error": 0.5}}
    assert drift_level(report, layer, table) == pytest.approx(max(d["mean_shift"]["mean"], d["var_log_ratio"]["mean"]) / 0.5)
    assert drift_level(report, layer, {"BN101": {"error": 2.0}, "BN102": {"error": 2.0}}) == pytest.approx(
        max(d["mean_shift"]["mean"], d["var_log_ratio"]["mean"]) / 2.0
    )


def test_table_shows_bars_and_shape(sample_runs, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")  # tables follow the terminal's width: the bars need a wide one
    result = invoke("report", sample_runs["drift_shifted"].path)
    assert result.exit_code == 1
    assert "drift (│=error)" in result.stdout and "drift shape: " in result.stdout
    shape = next(line for line in result.stdout.splitlines() if line.startswith("drift shape: "))
    assert shape.split()[2][-1] == "█"  # the last layer drifts most on this data
    monkeypatch.setenv("COLUMNS", "80")  # the headline stays one line however narrow the terminal
    with_baseline = invoke("report", sample_runs["drift_shifted"].path, "--baseline", sample_runs["drift_reference"].path)
    assert "baseline:" in with_baseline.stdout.splitlines()[0] and " new " in with_baseline.stdout
    exit_zero = invoke("report", sample_runs["drift_shifted"].path, "--exit-zero", "--quiet")
    assert exit_zero.exit_code == 0 and "FAILED" in exit_zero.stdout
    assert invoke("report", SAMPLES / "missing.json", "--exit-zero").exit_code == 2


def test_drift_shape_of_a_recalibrated_model_is_flat(tmp_path):
    """After recalibrate every layer's score is rounding noise (1e-13 to 1e-16), and the shape,
    scaled to its own maximum, drew full bars (▁▃█) as if the last layer drifted."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    assert sparkline([1e-16, 1e-13], floor=1e-3) == "▁▁" and sparkline([0.0, 0.5, 1.0], floor=1e-3) == "▁▅█"
    samples = Path(__file__).resolve().parents[2] / "sample_models"
    result = CliRunner().invoke(
        app, ["recalibrate", str(samples / "digits_cnn.onnx"), str(samples / "data/digits/shifted"), "-o", str(tmp_path / "r.onnx")],
        env={"COLUMNS": "200", "NO_COLOR": "1"},
    )
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("drift shape:"))
    assert line.startswith("drift shape: ▁▁▁ ") and "bars on a 0-0.001 scale" in line, line
