"""The guard of `bncheck recalibrate` through the CLI, on both backends: a recalibration that
makes a labelled model worse on the held-out split is refused (BN501, exit 1, nothing
written) unless --force-write; one that helps is written; the label-free check passes the
shifted digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bncheck.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
SHIFTED = ROOT / "sample_models" / "data" / "digits" / "shifted"

TUNED_ARCH = '''
import torch
from torch import nn


class Tuned(nn.Module):
    """A classifier fitted to its stored statistics (mean 0, variance 1): class 1 when x0 > 3.
    Recalibrated on data with mean 3, it moves its threshold to x0 > 6."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(2)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(self.bn(x))


def tuned():
    model = Tuned()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        model.fc.bias.copy_(torch.tensor([0.0, -3.0]))
    return model.eval()
'''


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def tuned(tmp_path):
    arch = tmp_path / "tuned_arch.py"
    arch.write_text(TUNED_ARCH)
    spec = f"{arch}:tuned"
    from bncheck.backends.torch.loading import build_from_arch

    model = build_from_arch(spec)
    state = tmp_path / "tuned.pt"
    torch.save(model.state_dict(), state)
    onnx_path = tmp_path / "tuned.onnx"
    torch.onnx.export(
        model, (torch.zeros(2, 2),), str(onnx_path), dynamo=False, do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL, input_names=["input"], dynamic_axes={"input": {0: "batch"}},
    )  # fmt: skip
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(3.0, 1.0, 2000), rng.normal(0.0, 1.0, 2000)], axis=1).astype(np.float32)
    y = (x[:, 0] > 3.0).astype(np.int64)
    data = tmp_path / "tuned.npz"
    np.savez(data, x=x, y=y)
    return {"torch": (state, ["--arch", spec], "out.pt"), "onnx": (onnx_path, [], "out.onnx")}, data


@pytest.mark.parametrize("family", ["torch", "onnx"])
def test_a_harmful_recalibration_is_not_written(tuned, tmp_path, family):
    models, data = tuned
    model, extra, name = models[family]
    out = tmp_path / name
    refused = run("recalibrate", model, data, "--out", out, "--method", "cumulative", "-f", "json", *extra)
    assert refused.exit_code == 1, refused.output
    body = json.loads(refused.stdout)
    guard = body["recalibration"]["guard"]
    assert guard["basis"] == "labels" and guard["worse"] and guard["accuracy_before"] == 1.0
    assert guard["accuracy_after"] < 0.7 and 150 <= guard["samples"] <= 250  # 10% of 2000
    assert [f["rule"] for f in body["findings"] if f["severity"] == "error"] == ["BN501"]
    assert body["recalibration"]["output"]["written"] is False and not out.exists()
    assert list(tmp_path.glob(f".{name}*")) == []  # no temporary file left either
    forced = run("recalibrate", model, data, "--out", out, "--method", "cumulative", "--force-write", "-f", "json", *extra)
    assert forced.exit_code == 1 and out.exists()  # written, the finding still reported
    assert "written anyway" in json.loads(forced.stdout)["findings"][0]["message"]
    unchecked = run("recalibrate", model, data, "--out", tmp_path / f"u{name}", "--method", "cumulative", "--holdout", "0", "-q", *extra)
    assert unchecked.exit_code == 0 and (tmp_path / f"u{name}").exists()


def test_a_helpful_recalibration_is_written_and_the_label_free_check_agrees(tmp_path):
    model = ROOT / "sample_models" / "digits_cnn.onnx"
    labelled = run("recalibrate", model, SHIFTED, "--out", tmp_path / "a.onnx", "-f", "json")
    assert labelled.exit_code == 0, labelled.output
    guard = json.loads(labelled.stdout)["recalibration"]["guard"]
    assert guard["basis"] == "labels" and not guard["worse"] and guard["accuracy_after"] > guard["accuracy_before"]
    free = run("recalibrate", model, SHIFTED, "--out", tmp_path / "b.onnx", "--labels", "none", "-f", "json")
    assert free.exit_code == 0, free.output
    guard = json.loads(free.stdout)["recalibration"]["guard"]
    assert guard["basis"] == "agreement with batch-statistics outputs" and not guard["worse"]
    assert guard["loss_after"] < guard["loss_before"]  # closer to the batch-statistics predictions
    assert "accuracy_before" not in guard and guard["confidence_after"] is not None


def test_bad_values_exit_2(tmp_path):
    model = ROOT / "sample_models" / "digits_cnn.onnx"
    for args, needle in ((["--prior", "-1"], "--prior"), (["--precision", "2"], "--precision"), (["--holdout", "1"], "--holdout"),
                         (["--method", "ema", "--prior", "5"], "--prior"), (["--device", "tpu"], "--device"),
                         (["--class-axis", "classes"], "--class-axis"), (["--class-axis", "3"], "--class-axis")):
        result = run("recalibrate", model, SHIFTED, "--out", tmp_path / "o.onnx", *args)
        assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output, (args, result.output)
        assert not (tmp_path / "o.onnx").exists()


def test_a_sequence_output_is_compared_position_by_position():
    """A CTC recogniser's (N, T, C) scores were flattened to one argmax over T x C values per
    sample (PP-OCRv4's 40 x 6,625), so one changed position anywhere could flip the sample's
    "top-1" or leave it alone. Now each sample's loss is the fraction of its T positions whose
    top-1 class changed; a dense map (N, C, H, W) is compared by distance; a classifier as before."""
    from bncheck.commands.recalibrate_guard import _losses
    from bncheck.numerics.outputs import confidence as _confidence

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4, 10, 7))
    out = reference.copy()
    out[0, 3] = np.roll(out[0, 3], 1)  # one position of ten changes its top class (a roll moves the max)
    out[2, [1, 5]] = np.roll(out[2, [1, 5]], 2, axis=-1)
    np.testing.assert_allclose(_losses(out, None, reference, 1), [0.1, 0.0, 0.2, 0.0])
    assert 0 < _confidence(out, 1) < 1
    dense = rng.normal(size=(3, 2, 4, 4))
    np.testing.assert_allclose(_losses(2 * dense, None, dense, None), np.mean(dense.reshape(3, -1) ** 2, axis=1) / np.mean(dense**2))
    assert _confidence(dense, None) is None
    scores = rng.normal(size=(5, 3))
    assert list(_losses(scores, np.argmax(scores, 1), None, 0)) == [0.0] * 5


def test_the_guard_of_a_real_recogniser_reads_positions(tmp_path):
    """PP-OCRv4's recogniser recalibrated on 24 synthetic lines: the held-out check compares each
    line's T positions, so its losses are multiples of 1/T."""
    import bncheck
    from bncheck.commands.recalibrate import RecalibrateOptions
    from tests.commands.test_drift_real_models import _model, _ppocr_batch
    from tests.support import real_models as rm

    path = _model(rm.PPOCR_REC)
    x = _ppocr_batch(24, 48, 160, 1, seed=3)
    report = bncheck.recalibrate(path, x, tmp_path / "out.onnx", options=RecalibrateOptions(batch_size=8, holdout=0.34))
    guard = report.to_dict()["recalibration"]["guard"]
    assert guard["basis"] == "agreement with batch-statistics outputs" and guard["samples"] >= 4, guard
    positions = 20  # 160 pixels wide: 20 CTC positions
    for key in ("loss_before", "loss_after"):
        assert 0 <= guard[key] <= 1
        assert abs(guard[key] * guard["samples"] * positions - round(guard[key] * guard["samples"] * positions)) < 1e-6, guard
    # fractions of lines, not whole lines: the flattened argmax could only give k / samples
    assert any(abs(guard[k] * guard["samples"] - round(guard[k] * guard["samples"])) > 1e-6 for k in ("loss_before", "loss_after")), guard


def test_class_axis_none_compares_an_embedding_by_distance(tmp_path):
    """An output without class scores (an embedding, features) judged by top-1 agreement says
    little; `--class-axis none` compares it by distance, as drift does; the default reads the
    digits' 10 scores as classes."""
    model = ROOT / "sample_models" / "digits_cnn.onnx"
    auto = run("recalibrate", model, SHIFTED, "--out", tmp_path / "a.onnx", "--labels", "none", "-f", "json")
    none = run("recalibrate", model, SHIFTED, "--out", tmp_path / "b.onnx", "--labels", "none", "--class-axis", "none", "-f", "json")
    assert auto.exit_code == 0 and none.exit_code == 0, (auto.output, none.output)
    a, b = (json.loads(r.stdout)["recalibration"]["guard"] for r in (auto, none))
    assert a["basis"] == "agreement with batch-statistics outputs"
    assert b["basis"] == "distance to batch-statistics outputs" and b["confidence_after"] is None
    assert b["loss_after"] < b["loss_before"] and not b["worse"]  # closer to the batch-statistics outputs
    last = run("recalibrate", model, SHIFTED, "--out", tmp_path / "c.onnx", "--labels", "none", "--class-axis", "-1", "-f", "json")
    assert json.loads(last.stdout)["recalibration"]["guard"]["loss_after"] == a["loss_after"]
