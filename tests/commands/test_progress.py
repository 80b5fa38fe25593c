"""Progress on stderr through the real CLI: every command names each of its long steps
(``progress = "always"`` / ``BNCHECK_PROGRESS=always`` draws rich's line on a stderr that is no
terminal, as CliRunner's is); never on stdout, never with --quiet or ``never``, and not by
default when stderr is no terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
ONNX = SAMPLES / "digits_cnn.onnx"
DATA = SAMPLES / "data" / "digits" / "shifted"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _steps(stderr: str) -> str:
    """What the line showed: the frames of rich's live display without the escape codes."""
    return ANSI.sub("", stderr.replace("\r", "\n"))


def _run(cli, monkeypatch, *args, progress: str | None = "always"):
    if progress is not None:
        monkeypatch.setenv("BNCHECK_PROGRESS", progress)
    run = cli(*args, "--format", "json")
    assert run.exit_code in (0, 1), run.stderr
    json.loads(run.stdout)  # the report on stdout is untouched by the progress line
    assert "\x1b" not in run.stdout
    return _steps(run.stderr)


def test_drift_names_the_pass_and_every_analysis_after_it(cli, monkeypatch):
    shown = _run(cli, monkeypatch, "drift", ONNX, DATA, "--limit", "256")
    for name in ("loading the model", "opening DATA (local)", "reading DATA", "/256 samples", "the split-half noise floor",
                 "BN103's input diagnosis", "BN301's comparison with DATA's own statistics", "BN201's train-mode pass"):
        assert f"drift {name}" in shown or name in shown, name
    assert "drift reading DATA" in shown


def test_fold_names_loading_folding_the_site_proofs_and_the_verification(cli, monkeypatch, tmp_path):
    shown = _run(cli, monkeypatch, "fold", SAMPLES / "digits_cnn.pt2", "--out", tmp_path / "f.pt2", "--samples", "8")
    for name in ("loading the model", "reading the verification inputs", "folding BN into the conv/linear weights",
                 "proving each folded site on its own (3 sites)", "converting to", "verifying the whole folded model against the original",
                 "writing OUT"):
        assert f"fold {name}" in shown, name
    assert "/8 samples" in shown  # the verification counts its samples


def test_recalibrate_names_each_pass_the_guard_and_the_verify_reports(cli, monkeypatch, tmp_path):
    shown = _run(cli, monkeypatch, "recalibrate", ONNX, DATA, "--out", tmp_path / "r.onnx", "--verify")
    for name in ("loading the model", "drift of MODEL on DATA (--verify): reading DATA", "exact, level 1 of 3: what its layers see",
                 "pass 2: what the model with the estimate sees", "checking the result on the held-out split", "writing OUT",
                 "drift of OUT on DATA (--verify): reading DATA", "the before/after figures"):
        assert f"recalibrate {name}" in shown, name


def test_audit_names_each_model(cli, monkeypatch):
    shown = _run(cli, monkeypatch, "audit", ONNX, SAMPLES / "cancer_mlp.onnx")
    assert f"audit loading model 1/2: {ONNX}" in shown and "audit checking 3 BN layer(s)" in shown


@pytest.mark.parametrize(("progress", "quiet"), [("always", True), ("never", False), (None, False), ("auto", False)])
def test_no_progress_when_quiet_never_or_not_a_terminal(cli, monkeypatch, progress, quiet):
    if progress is not None:
        monkeypatch.setenv("BNCHECK_PROGRESS", progress)
    run = cli("drift", ONNX, DATA, "--limit", "64", "--format", "json", *(["-q"] if quiet else []))
    assert "reading DATA" not in run.stderr and "\x1b" not in run.stderr


def test_the_config_file_setting_forces_it_too(cli, tmp_path):
    config = tmp_path / "bncheck.toml"
    config.write_text('[tool.bncheck]\nprogress = "always"\n')
    run = cli("audit", ONNX, "--config", config, "-f", "json")
    assert "audit loading the model" in _steps(run.stderr)
