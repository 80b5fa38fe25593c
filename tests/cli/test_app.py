"""The commands of bncheck/cli/app.py through the real CLI: one meaning for ``-o`` (the
report, in every command), with the old ``-o MODEL`` of fold/recalibrate/merge still read,
with a one-sentence warning."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "sample_models" / "digits_cnn.onnx"


def test_fold_writes_the_model_to_out_and_the_report_to_o(cli, tmp_path):
    model, run = tmp_path / "f.onnx", tmp_path / "run.json"
    result = cli("fold", DIGITS, "--out", model, "-o", run, "--no-timing", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    onnx.checker.check_model(onnx.load(str(model)))
    assert json.loads(run.read_text())["command"] == "fold"


def test_the_old_o_for_the_model_still_works_with_a_warning(cli, tmp_path):
    model = tmp_path / "f.onnx"
    result = cli("fold", DIGITS, "-o", model, "--no-timing", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert model.is_file() and json.loads(result.stdout)["command"] == "fold"
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and f"--out {model}" in warning[0], result.stderr


def test_fold_without_out_says_what_to_give(cli, assert_usage_error, tmp_path):
    assert_usage_error(cli("fold", DIGITS, "-o", tmp_path / "run.json"), "--out FILE")


def test_merge_reads_the_old_o_with_a_warning(cli, tmp_path):
    result = cli("merge", tmp_path / "missing.npz", "-o", tmp_path / "stats.npz")
    lines = result.stderr.splitlines()
    assert result.exit_code == 2
    assert lines[0].startswith("warning: -o is deprecated in bncheck merge") and "--out" in lines[0]
    assert lines[1].startswith("error: ") and "missing.npz" in lines[1]
    assert len(lines) == 2
