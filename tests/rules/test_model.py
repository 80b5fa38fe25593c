"""BN000 (no batch-norm layer) through the real CLI: every command that reads a model says so on
stderr whatever the format and wherever the report goes, and ``--fail-on warning`` fails on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bncheck

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
FOLDED = SAMPLES / "broken" / "digits_cnn_folded.onnx"  # torch.onnx.export folded its BN
DIGITS = SAMPLES / "digits_cnn.onnx"
DATA = SAMPLES / "data" / "digits" / "shifted"


def _args(command: str, model: Path, tmp_path: Path) -> list:
    return {
        "audit": ["audit", model],
        "drift": ["drift", model, DATA, "--limit", "32"],
        "fold": ["fold", model, "--out", tmp_path / "folded.onnx"],
    }[command]


def _stderr_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "BN000" in line]


@pytest.mark.parametrize("command", ["audit", "drift", "fold"])
def test_no_batch_norm_is_said_on_stderr_with_a_json_report_file(cli, tmp_path, command):
    out = tmp_path / "report.json"
    run = cli(*_args(command, FOLDED, tmp_path), "--format", "json", "-o", out)
    assert run.exit_code == 0, run.stderr  # a warning: the default gate (error) passes
    (line,) = _stderr_lines(run.stderr)
    assert line.startswith(f"warning: {FOLDED}: the model has no batch-norm layer (9 ops/modules)") and "--fail-on warning" in line
    report = json.loads(out.read_text())
    assert [f["rule"] for f in report["findings"]] == ["BN000"] and report["findings"][0]["severity"] == "warning"


@pytest.mark.parametrize("command", ["audit", "drift", "fold"])
def test_fail_on_warning_makes_it_a_failure(cli, tmp_path, command):
    run = cli(*_args(command, FOLDED, tmp_path), "--format", "json", "--fail-on", "warning")
    assert run.exit_code == 1
    assert json.loads(run.stdout)["summary"]["passed"] is False  # stdout is the report, the line is on stderr
    assert len(_stderr_lines(run.stderr)) == 1


def test_quiet_and_ignore_silence_it(cli, tmp_path):
    assert _stderr_lines(cli("audit", FOLDED, "-q").stderr) == []
    ignored = cli("audit", FOLDED, "--ignore", "BN000", "-f", "json", "--fail-on", "warning")
    assert ignored.exit_code == 0 and _stderr_lines(ignored.stderr) == [] and json.loads(ignored.stdout)["findings"] == []


def test_several_models_say_which_has_none(cli):
    run = cli("audit", DIGITS, FOLDED, "-f", "json")
    assert run.exit_code == 0
    (line,) = _stderr_lines(run.stderr)
    assert str(FOLDED) in line


def test_a_model_with_batch_norm_has_no_bn000(cli):
    run = cli("audit", DIGITS, "-f", "json")
    assert _stderr_lines(run.stderr) == [] and all(f["rule"] != "BN000" for f in json.loads(run.stdout)["findings"])
    assert [f.rule for f in bncheck.audit(FOLDED).findings] == ["BN000"]  # the Python API has it too


def test_recalibrate_refuses_a_model_with_no_batch_norm(cli, assert_usage_error, tmp_path):
    run = cli("recalibrate", FOLDED, DATA, "--out", tmp_path / "r.onnx", "-f", "json", "-o", tmp_path / "r.json")
    assert_usage_error(run, "no batch-norm layers found", "nothing to recalibrate")
    assert not (tmp_path / "r.onnx").exists() and not (tmp_path / "r.json").exists()
