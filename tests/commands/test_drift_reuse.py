"""BN301 reuses the main pass: the subsample's eval-mode (stored statistics) moments are merged
from the per-sample moments the main pass kept with the subsample, against a float64 numpy
reference of the very BN inputs, on eager torch, TorchScript and ONNX; and the default drift run
does no eval pass over the subsample beyond BN301's own (counted at the runner), with the same
figures as measuring the subsample again."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import bncheck
from bncheck.backends.load import as_source
from bncheck.backends.runner import ModelRunner
from bncheck.commands.drift import DriftOptions
from bncheck.commands.drift_setting import kept_moments
from bncheck.engines.measure import measure
from bncheck.numerics.moments import Moments
from bncheck.numerics.reservoir import Reservoir

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
REFERENCE = SAMPLES / "data" / "digits" / "reference"


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 8 * 8, 10), nn.BatchNorm1d(10), nn.Linear(10, 5),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (model[1], model[4], model[8]):
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _bn_inputs(model: nn.Sequential, x: np.ndarray) -> dict[str, np.ndarray]:
    """The float64 inputs of every BN module of ``model`` on ``x`` (forward pre-hooks)."""
    seen: dict[str, np.ndarray] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0].detach().double().numpy()))
        for name, m in model.named_modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)
    ]  # fmt: skip
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("kind", ["eager", "torchscript", "onnx"])
def test_the_kept_subsample_moments_match_a_float64_reference(kind, tmp_path):
    model = _cnn()
    rng = np.random.default_rng(1)
    x = (rng.normal(0.4, 1.3, (44, 3, 12, 12)) + rng.normal(0, 0.5, (44, 3, 1, 1))).astype(np.float32)
    if kind == "eager":
        source = as_source(model)
    elif kind == "torchscript":
        path = tmp_path / "m.ts"
        torch.jit.script(model).save(str(path))
        source = as_source(path)
    else:
        path = tmp_path / "m.onnx"
        torch.onnx.export(model, torch.from_numpy(x[:2]), str(path), dynamic_axes={"input": {0: "n"}}, input_names=["input"], training=torch.onnx.TrainingMode.EVAL, do_constant_folding=False, dynamo=False)
        source = as_source(path)
    with source.runner() as runner:
        result = measure(runner, [SimpleNamespace(x=x[i : i + 8]) for i in range(0, len(x), 8)], keep=16)
        names = list(result.moments)
    # ONNX: the one-pass layers (the conv maps) give per-sample moments, a two-pass layer (the
    # BatchNorm1d here) only its batch's, and then BN301 measures the subsample itself
    assert len(names) == 3 and set(result.sub_moments) == (set(names) if kind != "onnx" else set(names[:2]))
    assert (kept_moments(result.sub_moments, names) is None) == (kind == "onnx")
    kept = kept_moments(result.sub_moments, list(result.sub_moments))
    # the reference: the BN inputs of exactly the kept samples, in float64
    positions = [int(np.flatnonzero((x == s).all(axis=(1, 2, 3)))[0]) for s in result.subsample]
    inputs = _bn_inputs(model, x[positions])
    for name, ref in zip(names, inputs.values(), strict=True):
        if name not in kept:
            continue
        want = Moments.of_array(ref)
        got = kept[name]
        assert got.count == want.count
        np.testing.assert_allclose(got.mean, want.mean, rtol=0, atol=1e-6 * float(np.sqrt(want.var).max()))
        np.testing.assert_allclose(got.var, want.var, rtol=1e-6)
    # and any part of the subsample merges too (BN301's half of the subsample)
    half = kept_moments(result.sub_moments, names[:1], slice(0, None, 2))
    first = list(inputs.values())[0]
    np.testing.assert_allclose(half[names[0]].var, Moments.of_array(first[0::2]).var, rtol=1e-6)


class _Counted:
    """Samples run through ``ModelRunner.moments`` (eval passes over arrays: the subsample)."""

    def __init__(self, monkeypatch):
        self.samples = 0
        original = ModelRunner.moments

        def moments(runner, x):
            self.samples += len(x)
            return original(runner, x)

        monkeypatch.setattr(ModelRunner, "moments", moments)


def _conv_onnx(tmp_path: Path) -> Path:
    """The test CNN without its BatchNorm1d, as ONNX: every BN layer one-pass."""
    model = _cnn()
    conv = nn.Sequential(*list(model)[:6], nn.Flatten(), nn.Linear(6 * 8 * 8, 5)).eval()
    path = tmp_path / "conv.onnx"
    torch.onnx.export(conv, torch.zeros(2, 3, 12, 12), str(path), dynamic_axes={"input": {0: "n"}}, input_names=["input"], training=torch.onnx.TrainingMode.EVAL, do_constant_folding=False, dynamo=False)
    return path


@pytest.mark.parametrize(
    ("model", "remeasured"),
    [("digits_cnn.ts", 0), ("conv.onnx", 0), ("digits_cnn.onnx", 64)],  # its BatchNorm1d is a two-pass layer: measured again
)
def test_the_default_run_measures_the_subsample_once_per_bn301_pass(model, remeasured, monkeypatch, tmp_path):
    if model == "conv.onnx":
        path, data = _conv_onnx(tmp_path), (np.random.default_rng(2).normal(0.2, 1.0, (540, 3, 12, 12)).astype(np.float32))
    else:
        path, data = SAMPLES / model, REFERENCE
    options = DriftOptions(mismatch_samples=64, diagnosis_samples=0)  # no BN103 diagnosis passes in the count
    counted = _Counted(monkeypatch)
    report = bncheck.drift(path, data, options=options)
    reused, eval_samples = report.result.train_eval, counted.samples
    assert report.result.data["samples"] == 540
    # the level-by-level pass (counted in refinement_passes) runs segments, not ModelRunner.moments
    passes = reused.refinement_passes - (1 if reused.refinement_method == "level by level" else 0)
    # BN301's own eval passes with DATA's statistics, and no pass re-measuring the subsample's
    # stored-statistics moments where the main pass kept them
    assert eval_samples == passes * 64 + remeasured

    # the same run measuring the subsample again (the path without kept per-sample moments)
    monkeypatch.setattr(Reservoir, "_keep_moments", lambda self, moments, slots: None)
    counted.samples = 0
    again = bncheck.drift(path, data, options=options).result.train_eval
    assert counted.samples == passes * 64 + 64
    for key in ("top1_agreement", "flips", "refinement_passes", "accuracy_stored", "accuracy_population"):
        assert getattr(reused, key) == getattr(again, key), key
    assert math.isclose(reused.relative_error, again.relative_error, rel_tol=1e-5)
    floor, floor_again = reused.noise_floor.to_dict(), again.noise_floor.to_dict()
    assert floor.keys() == floor_again.keys()
    for key, value in floor.items():
        assert value == floor_again[key] or math.isclose(value, floor_again[key], rel_tol=1e-5), key
    assert reused.significance == pytest.approx(again.significance, rel=1e-5, nan_ok=True)


def test_torch_bn301_runs_the_model_itself_with_data_statistics_and_restores_them(monkeypatch):
    """A torch module gets DATA's statistics swapped in place for BN301's passes (no copy of the
    model, no second runner) and carries exactly its stored statistics again afterwards, with
    the figures of the copy route."""
    from bncheck.backends.torch.backend import TorchBackend

    model = _cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = np.random.default_rng(3).normal(0.5, 1.2, (96, 3, 12, 12)).astype(np.float32)
    options = DriftOptions(mismatch_samples=64, diagnosis_samples=0)
    settings = bncheck.Settings(thresholds={"BN301": {"warning_disagreement": 0.0, "warning_rel_err": 0.0}})  # the floor's pass too
    copies = []
    original = TorchBackend.with_statistics
    monkeypatch.setattr(TorchBackend, "with_statistics", lambda self, *a, **k: copies.append(1) or original(self, *a, **k))
    in_place = bncheck.drift(model, x, options=options, settings=settings).result.train_eval
    assert copies == [] and in_place.refinement_passes >= 1 and in_place.noise_floor.measured
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # the copy route (what ONNX and torch.export take) gives the same figures
    monkeypatch.setattr(TorchBackend, "statistics_in_place", lambda self, source, stats: None)
    copied = bncheck.drift(model, x, options=options, settings=settings).result.train_eval
    assert copies
    for key in ("top1_agreement", "relative_error", "refinement_passes", "significance"):
        assert getattr(in_place, key) == pytest.approx(getattr(copied, key), rel=1e-6), key
    assert in_place.noise_floor.relative_error == pytest.approx(copied.noise_floor.relative_error, rel=1e-6)
