"""`bncheck drift` on a model with no BN layer has nothing to measure, but DATA is still input:
a missing folder, an empty one or samples of the wrong shape exit 2 with one sentence, as they
do for a model with BN layers (basic-pitch's tf2onnx model once passed all three, exit 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bncheck.cli.app import app


@pytest.fixture
def no_bn(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)).eval()
    path = tmp_path / "no_bn.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return path


def test_bad_data_fails_a_model_with_no_bn(no_bn, tmp_path):
    (tmp_path / "empty").mkdir()
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    np.save(wrong / "0.npy", np.zeros((5, 7), np.float32))
    cases = {tmp_path / "missing": "does not exist", tmp_path / "empty": "is empty", wrong: "the model's input (1, 8, 8)"}
    for data, says in cases.items():
        result = CliRunner().invoke(app, ["drift", str(no_bn), str(data)])
        assert result.exit_code == 2, result.output
        assert says in result.output and "Traceback" not in result.output
        assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1


def test_good_data_passes_a_model_with_no_bn_with_its_note(no_bn, tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    np.save(good / "x.npy", np.random.default_rng(0).normal(size=(6, 1, 8, 8)).astype(np.float32))
    result = CliRunner().invoke(app, ["drift", str(no_bn), str(good)])
    assert result.exit_code == 0, result.output
    assert "BN000" in result.output
