"""BN301/BN201 output analyses (bncheck.commands.drift_outputs) end to end: DATA's population
statistics against a float64 numpy fixed point, time-major outputs, dense maps, an analysis that
fails after the measurement, and --class-axis through the real CLI."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import bncheck
from bncheck.cli.app import app
from bncheck.commands.drift import DriftOptions
from bncheck.config import Settings


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.normal_(0, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _numpy_forward(model: nn.Sequential, x: np.ndarray, stats=None):
    """float64 forward of the MLP; ``stats``: per BN (mean, var) to use instead of the stored
    ones, or "population" for DATA's exact population statistics layer by layer (each BN with
    the BNs before it already on DATA's statistics: the fixed point recalibrate converges to)."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    h = x.astype(np.float64)
    used = []
    for lin, bn in (("0", "1"), ("3", "4")):
        h = h @ p[f"{lin}.weight"].T + p[f"{lin}.bias"]
        if stats == "population":
            mean, var = h.mean(0), h.var(0)
        else:
            mean, var = p[f"{bn}.running_mean"], p[f"{bn}.running_var"]
        used.append((mean, var))
        h = np.maximum((h - mean) / np.sqrt(var + 1e-5) * p[f"{bn}.weight"] + p[f"{bn}.bias"], 0.0)
    return h @ p["6.weight"].T + p["6.bias"], used


def test_bn301_compares_with_the_float64_population_fixed_point():
    model = _mlp()
    rng = np.random.default_rng(0)
    x = rng.normal(0.6, 1.4, size=(200, 6)).astype(np.float32)  # not what the statistics describe
    stored, _ = _numpy_forward(model, x)
    population, _ = _numpy_forward(model, x, "population")
    labels = population.argmax(1)  # labels the recalibrated model gets right
    report = bncheck.drift(model, (x, labels), options=DriftOptions(mismatch_samples=200))
    te = report.result.train_eval
    rel = np.linalg.norm(population - stored) / np.linalg.norm(stored)
    assert te.relative_error == pytest.approx(rel, rel=1e-4)
    assert te.top1_agreement == pytest.approx(np.mean(population.argmax(1) == stored.argmax(1)), abs=1e-12)
    assert te.accuracy_stored == pytest.approx(np.mean(stored.argmax(1) == labels), abs=1e-12)
    assert te.accuracy_population == 1.0
    # the one-pass statistics of the second BN were not exact: refined level by level, on every
    # sample (the fixed point there, with its own outputs: one pass, no eval pass checking it)
    assert te.refinement_method == "level by level" and te.refinement_passes == 1 and te.refinement_movement == 0.0
    finding = next(f for f in report.findings if f.rule == "BN301")
    assert "recalibrating on this data would take accuracy from" in finding.message and "to 100.0%" in finding.message


def test_bn301_quiet_where_the_statistics_are_data_s_own():
    model = _mlp()
    x = np.random.default_rng(1).normal(size=(256, 6)).astype(np.float32)
    _, used = _numpy_forward(model, x, "population")
    with torch.no_grad():
        for bn, (mean, var) in zip((model[1], model[4]), used, strict=True):
            bn.running_mean.copy_(torch.from_numpy(mean))
            bn.running_var.copy_(torch.from_numpy(var))
    report = bncheck.drift(model, x, options=DriftOptions())
    te = report.result.train_eval
    assert te.relative_error < 1e-5 and te.top1_agreement == 1.0
    # an effect below BN301's warning thresholds cannot fire: its noise-floor pass is skipped
    assert te.noise_floor.to_dict() == {"measured": False} and math.isnan(te.significance)
    assert not [f for f in report.findings if f.rule in ("BN101", "BN102", "BN301")]
    # with thresholds that any effect reaches, the floor is measured, and dwarfs the effect
    reached = bncheck.drift(model, x, options=DriftOptions(), settings=Settings(thresholds={"BN301": {"warning_disagreement": 0.0, "warning_rel_err": 0.0}}))
    te = reached.result.train_eval
    assert te.noise_floor.measured and te.noise_floor.relative_error > 10 * te.relative_error
    assert te.significance < 0
    assert not [f for f in reached.findings if f.rule == "BN301"]


class TimeMajor(nn.Module):
    """(N, 4, T) -> (T, N, C), the usual torch CTC layout."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.conv = nn.Conv1d(4, 12, 3, padding=1)
        self.bn = nn.BatchNorm1d(12)
        self.head = nn.Conv1d(12, classes, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x)))).permute(2, 0, 1)


def _time_major(shift: float = 1.0) -> nn.Module:
    torch.manual_seed(2)
    model = TimeMajor()
    with torch.no_grad():
        model.bn.running_mean.fill_(shift)
    return model.eval()


def _per_position_agreement(model: nn.Module, x: np.ndarray) -> float:
    """Stored vs DATA's statistics (one BN layer: the one-pass statistics are exact), compared
    per time step over the class axis, in float64 torch."""
    ref = copy.deepcopy(model).double()
    xt = torch.from_numpy(x).double()
    with torch.no_grad():
        stored = ref(xt)
        h = ref.conv(xt)
        ref.bn.running_mean.copy_(h.mean((0, 2)))
        ref.bn.running_var.copy_(h.var((0, 2), unbiased=False))
        pop = ref(xt)
    return float((pop.argmax(-1) == stored.argmax(-1)).double().mean())


@pytest.mark.parametrize("steps", [20, 32])  # 32: T equals the batch size, a one-sample run tells them apart
def test_time_major_outputs_compare_per_position(steps):
    model = _time_major()
    x = np.random.default_rng(3).normal(size=(96, 4, steps)).astype(np.float32)
    report = bncheck.drift(model, x, options=DriftOptions(mismatch_samples=96, train_pass="always"))
    te, sb = report.result.train_eval, report.result.small_batch
    assert te.batch_axis == 1 and te.positions == steps and te.class_axis == 2  # (T, N, C): C is the output's axis 2
    # float32 against float64: at most one near-tie of the 96 x T positions may differ
    assert te.top1_agreement == pytest.approx(_per_position_agreement(model, x), abs=1.01 / (96 * steps))
    assert sb.positions == steps and 0 <= sb.flip_rate <= 1
    assert not any("could not be done" in note for note in report.notes)
    # the reported class axis, handed back as --class-axis, is the same comparison
    again = bncheck.drift(model, x, options=DriftOptions(mismatch_samples=96, class_axis=te.class_axis)).result.train_eval
    assert again.class_axis == te.class_axis and again.top1_agreement == te.top1_agreement


@pytest.mark.parametrize(("per_sample", "batch_axis", "expected"), [(0, 0, 1), (1, 0, 2), (1, 1, 2), (0, 1, 0), (None, 0, None)])
def test_the_reported_class_axis_counts_the_batch_axis(per_sample, batch_axis, expected):
    from bncheck.commands.drift_outputs import output_axis

    assert output_axis(per_sample, batch_axis) == expected


def test_dense_maps_compare_by_relative_error():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 1), nn.Sigmoid()).eval()
    x = np.random.default_rng(4).normal(size=(64, 3, 16, 16)).astype(np.float32)
    te = bncheck.drift(model, x, options=DriftOptions(mismatch_samples=64)).result.train_eval
    assert te.class_axis is None and te.top1_agreement is None and te.relative_error > 0


class Pairwise(nn.Module):
    """Returns (N, N) similarities: no per-sample output of fixed shape."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        h = self.bn(self.fc(x))
        return h @ h.T


def test_an_analysis_that_fails_becomes_a_note_and_the_measurement_is_kept():
    torch.manual_seed(5)
    x = np.random.default_rng(5).normal(size=(80, 5)).astype(np.float32)
    report = bncheck.drift(Pairwise().eval(), x, options=DriftOptions())
    assert report.result.layers["bn"]["samples"] == 80
    assert report.result.train_eval is None and report.result.small_batch is None
    assert any("output comparisons" in note and "cannot be compared per sample" in note for note in report.notes)


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_time_major_torchscript_through_the_cli(tmp_path):
    """The case that used to end with exit 2 after the whole measurement (operands could not be
    broadcast): a traced CRNN-like model with a (T, N, C) output."""
    model = _time_major(shift=0.0)
    path = tmp_path / "crnn.ts"
    torch.jit.trace(model, torch.zeros(2, 4, 24)).save(str(path))
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(6).normal(size=(70, 4, 24)).astype(np.float32))
    result = _cli("drift", path, data, "-f", "json")
    assert result.exit_code in (0, 1), result.output
    body = json.loads(result.stdout)
    assert body["schema_version"] == 3
    te = body["drift"]["train_eval"]
    assert te["batch_axis"] == 1 and te["positions"] == 24 and "noise_floor" in te
    none = json.loads(_cli("drift", path, data, "-f", "json", "--class-axis", "none").stdout)["drift"]["train_eval"]
    assert "top1_agreement" not in none and none["relative_error"] == pytest.approx(te["relative_error"], rel=1e-6)


@pytest.mark.parametrize(("value", "message"), [("classes", "--class-axis: must be auto, none or an axis"), ("1", "batch axis")])
def test_bad_class_axis_exits_2_with_one_sentence(tmp_path, value, message):
    model = _time_major()
    path = tmp_path / "crnn.ts"
    torch.jit.trace(model, torch.zeros(2, 4, 24)).save(str(path))
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(7).normal(size=(40, 4, 24)).astype(np.float32))
    result = _cli("drift", path, data, "--class-axis", value)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_bn301_held_back_for_want_of_samples_says_so(tmp_path):
    """19 samples of uniform noise into the digits CNN: top-1 agreement far below the noise
    floor's, yet not significant on so few samples, so BN301 stays silent; a note says what
    was seen and that more samples decide. On the reference digits there is no such note."""
    data = tmp_path / "noise"
    data.mkdir()
    np.save(data / "x.npy", np.random.default_rng(1).random((19, 1, 8, 8)).astype(np.float32))
    model = Path(__file__).resolve().parents[2] / "sample_models" / "digits_cnn.onnx"
    report = bncheck.drift(model, data)
    assert not [f for f in report.findings if f.rule == "BN301"]
    note = next(n for n in report.notes if n.startswith("BN301 held back: top-1 agreement"))
    assert "on 19 samples" in note and "more samples" in note
    reference = bncheck.drift(model, Path(__file__).resolve().parents[2] / "sample_models" / "data" / "digits" / "reference")
    assert not any(n.startswith("BN301 held back") for n in reference.notes)
