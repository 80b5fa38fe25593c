"""BN301's noise floor runs in stages and stops once the samples it has run decide the rule
(a group-sequential test): the decision is the one the whole pass gives, on in-distribution
data (futility) and on shifted data (efficacy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import bncheck
import bncheck.commands.drift_outputs as drift_outputs
from bncheck.commands.drift import DriftOptions


def _model() -> torch.nn.Module:
    """A random-init CNN whose 10 scores depend on every pixel (near ties: its top-1 flips under
    small changes of the statistics), its running statistics the population's of 2,048 samples."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(1024, 10),
    )  # fmt: skip
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = None  # cumulative average: the population statistics
    calibration = np.random.default_rng(1).standard_normal((2048, 3, 8, 8)).astype(np.float32)
    model.train()
    with torch.no_grad():
        for start in range(0, len(calibration), 32):
            model(torch.from_numpy(calibration[start : start + 32]))
    return model.eval()


def _data(shift: float) -> np.ndarray:
    return np.random.default_rng(2).standard_normal((400, 3, 8, 8)).astype(np.float32) + np.float32(shift)


def _run(model, x):
    report = bncheck.drift(model, x, options=DriftOptions())
    return report.result.train_eval, sorted({f.rule for f in report.findings})


def test_the_stages_double_from_64_samples_and_end_at_the_subsample():
    assert drift_outputs._floor_stages(32) == [32]
    assert drift_outputs._floor_stages(64) == [64]
    assert drift_outputs._floor_stages(100) == [64, 100]
    assert drift_outputs._floor_stages(256) == [64, 128, 256]


@pytest.fixture
def floor_always(monkeypatch):
    """The floor measured whatever the effect (this model's effect on its own kind of data is below
    BN301's warning threshold, where the floor's pass is skipped)."""
    monkeypatch.setattr(drift_outputs, "_within_reach", lambda *args: True)
    return monkeypatch


def test_on_data_the_statistics_fit_the_floor_stops_early_and_the_rule_stays_silent(floor_always):
    model, x = _model(), _data(0.0)
    staged, staged_rules = _run(model, x)
    floor_always.setattr(drift_outputs, "FLOOR_STAGE", 10**6)  # one stage: the whole subsample
    whole, whole_rules = _run(model, x)
    assert whole.noise_floor.samples == whole.samples == 256
    assert staged.noise_floor.samples < 256  # stopped: below 2x the floor on the samples run
    assert staged.significance < 0 and whole.significance < 3
    assert "BN301" not in staged_rules and "BN301" not in whole_rules
    assert staged.top1_agreement == whole.top1_agreement  # the effect is measured on every sample


def test_on_shifted_data_the_floor_stops_at_64_samples_and_the_rule_fires(floor_always):
    model, x = _model(), _data(1.0)
    staged, staged_rules = _run(model, x)
    floor_always.setattr(drift_outputs, "FLOOR_STAGE", 10**6)
    whole, whole_rules = _run(model, x)
    assert staged.noise_floor.samples == 64 and staged.significance >= 6
    assert whole.noise_floor.samples == 256 and whole.significance >= 6
    assert "BN301" in staged_rules and "BN301" in whole_rules


def test_a_stop_is_in_the_json_report(floor_always):
    staged, _ = _run(_model(), _data(1.0))
    assert staged.to_dict()["noise_floor"]["samples"] == 64


def test_where_the_refinement_diverged_no_floor_is_measured_and_bn301_judges_nothing(monkeypatch):
    """Whole-model passes that diverged (a deep TorchScript model) leave statistics that are no
    estimate of DATA's: however far their outputs lie from the stored ones, BN301 stays silent,
    its floor's pass is not run, and the note says why."""
    from bncheck.commands import drift_refine

    def diverged(source, runner, full, setting, **kwargs):
        outputs = setting.reference.copy()
        outputs[:, 0] += 100.0  # every top-1 changes
        return drift_refine.Refined(full, outputs, 2, 0.5, False, "fixed-point passes (diverging: stopped)")

    monkeypatch.setattr(drift_outputs, "refine", diverged)
    monkeypatch.setattr(drift_outputs, "_with_floor", lambda *args, **kwargs: pytest.fail("the floor was measured"))
    report = bncheck.drift(_model(), _data(0.0), options=DriftOptions())
    te = report.result.train_eval
    assert te.top1_agreement < 0.5 and te.noise_floor.measured is False
    assert "BN301" not in {f.rule for f in report.findings}
    assert any("diverged" in note and "judges nothing" in note for note in report.notes), report.notes
