"""`bncheck drift` on a model whose BN layers normalise with their batch's statistics at
inference passed silently (exit 0, "no findings", even with --fail-on info): drift runs BN004
(no running statistics) and BN005 (saved in training mode) beside its own rules, as --select
and --ignore allow. And BN005 does not call a layer with no running statistics, which
torch.export writes as a training-mode batch norm, "saved in training mode"."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bncheck.cli.app import app


def _cnn(track: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8, track_running_stats=track), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4),
    )  # fmt: skip


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).normal(size=(64, 3, 8, 8)).astype(np.float32))
    return path


def _drift(*args) -> object:
    return CliRunner().invoke(app, ["drift", *map(str, args), "--mismatch-samples", "0"])


def test_no_running_statistics_fail_the_drift_gate(tmp_path, data):
    path = tmp_path / "notrack.ts"
    torch.jit.trace(_cnn(track=False).eval(), torch.zeros(2, 3, 8, 8)).save(str(path))
    result = _drift(path, data)
    assert result.exit_code == 1, result.output
    assert "BN004" in result.output and "track_running_stats=False" in result.output
    assert _drift(path, data, "--ignore", "BN004").exit_code == 0
    assert "BN004" not in _drift(path, data, "--select", "BN1").output


def test_a_module_saved_in_training_mode_is_said_by_drift(tmp_path, data):
    model = _cnn()
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.load(data)[:32]))
    path = tmp_path / "train.ts"
    torch.jit.script(model).save(str(path))
    result = _drift(path, data)
    assert "BN005" in result.output and "saved in training mode" in result.output, result.output
    assert _drift(path, data, "--fail-on", "warning").exit_code == 1


def test_an_exported_program_with_no_running_statistics_is_not_said_to_be_in_training_mode(tmp_path):
    path = tmp_path / "notrack.pt2"
    torch.export.save(torch.export.export(_cnn(track=False).eval(), (torch.zeros(2, 3, 8, 8),)), str(path))
    result = CliRunner().invoke(app, ["audit", str(path)])
    assert "BN004" in result.output and "BN005" not in result.output, result.output


def test_recalibrate_says_that_a_module_saved_in_training_mode_stays_so(tmp_path, data):
    """recalibrate wrote a scripted train-mode module back in training mode without a word:
    whoever runs OUT as-is normalises with each batch and never uses the new statistics."""
    model = _cnn()
    model.train()
    path, out = tmp_path / "train.ts", tmp_path / "out.ts"
    torch.jit.script(model).save(str(path))
    result = CliRunner().invoke(app, ["recalibrate", str(path), str(data), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "saved in training mode (BN005" in " ".join(result.output.split()) and "OUT keeps that mode" in " ".join(result.output.split())
    eval_path = tmp_path / "eval.ts"
    torch.jit.script(_cnn().eval()).save(str(eval_path))
    result = CliRunner().invoke(app, ["recalibrate", str(eval_path), str(data), "-o", str(tmp_path / "out2.ts")])
    assert result.exit_code == 0 and "training mode" not in result.output, result.output
