"""BN201's train-mode pass is skipped where the batch scatter estimated from the main pass's
per-sample moments is far below BN201's threshold (``--train-pass auto``, the default): the
estimate is exact for a first BN layer, and on the sample and real trained models the pass
never measures more than the estimate's worst layer by more than the margin
(``SKIP_SCATTER_FRACTION``) allows; ``--train-pass always`` runs it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import bncheck
from bncheck.backends.torch.runner import TorchRunner
from bncheck.cli.app import app
from bncheck.commands import drift_small_batch as outputs
from bncheck.commands.drift import DriftOptions
from bncheck.config import Settings
from tests.commands.test_drift import Net
from tests.commands.test_drift_real_models import _ppocr_batch, _text_image
from tests.support import real_models as rm

SAMPLE_MODELS = Path(__file__).resolve().parents[2] / "sample_models"


@pytest.fixture
def fitted():
    """A CNN whose stored statistics are those of its data (two calibration passes in train
    mode would do the same), and 128 samples of 3 x 16 x 16."""
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(0.3, 0.8, size=(128, 3, 16, 16)).astype(np.float32)
    model = Net()
    model.train()
    for bn in (model.bn1, model.bn2):
        bn.momentum = None  # cumulative average: the population statistics of the pass
    with torch.no_grad():
        for _ in range(2):
            for bn in (model.bn1, model.bn2):
                bn.reset_running_stats()
            model(torch.from_numpy(x))
    return model.eval(), x


def _train_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = TorchRunner.train_moments

    def counted(self, x):
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(TorchRunner, "train_moments", counted)
    return calls


def test_fitted_statistics_skip_the_train_pass_and_always_runs_it(fitted, monkeypatch):
    model, x = fitted
    calls = _train_calls(monkeypatch)
    auto = bncheck.drift(model, x, options=DriftOptions(mismatch_samples=128)).result.small_batch
    assert calls == [] and auto.train_pass is False
    assert auto.relative_error is None and auto.flip_rate is None and auto.samples == 128
    always = bncheck.drift(model, x, options=DriftOptions(mismatch_samples=128, train_pass="always")).result.small_batch
    assert calls == [16] * 8 and always.train_pass is True and always.flip_rate is not None
    # the first BN layer has no BN before it: the estimate is what the pass measures
    assert auto.layers["bn1"].mean_scatter == pytest.approx(always.layers["bn1"].mean_scatter, rel=1e-6)
    assert auto.layers["bn1"].var_scatter == pytest.approx(always.layers["bn1"].var_scatter, rel=1e-6)
    assert auto.max_mean_scatter < 0.125 and set(auto.layers) == set(always.layers)


def test_a_skipped_pass_never_fires_bn201_and_the_json_says_so(fitted, tmp_path):
    model, x = fitted
    report = bncheck.drift(model, x, options=DriftOptions(mismatch_samples=128))
    assert "BN201" not in {f.rule for f in report.findings}
    record = json.loads(report.to_json())["drift"]["small_batch"]
    assert record["train_pass"] is False and record["relative_error"] is None and "flip_rate" not in record


def test_large_batch_scatter_runs_the_pass_and_fires(monkeypatch):
    """Batch size 2 on a BatchNorm1d: batch means scatter by about 1/sqrt(2) std, far above the
    skip margin: the pass runs and BN201 fires as before."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x = np.random.default_rng(1).normal(size=(128, 6)).astype(np.float32)
    model.train()
    model[1].momentum = None
    with torch.no_grad():
        model(torch.from_numpy(x))
    calls = _train_calls(monkeypatch)
    report = bncheck.drift(model.eval(), x, options=DriftOptions(mismatch_samples=128, train_batch_size=2))
    assert calls and report.result.small_batch.train_pass is True
    assert report.result.small_batch.max_mean_scatter > 0.5


def _estimated(model, data, **kw):
    """The estimate and, in the same run, what the pass measures: BN201's mean_scatter threshold
    0 keeps the pass from being skipped while the estimate is still made."""
    seen = {}
    original = outputs.estimated_scatter

    def keep(*args, **kwargs):
        seen["estimate"] = original(*args, **kwargs)
        return seen["estimate"]

    arch = kw.pop("arch", None)
    settings = Settings(thresholds={"BN201": {"mean_scatter": 0.0}})
    mp = pytest.MonkeyPatch()
    mp.setattr(outputs, "estimated_scatter", keep)
    try:
        measured = bncheck.drift(model, data, arch=arch, settings=settings, options=DriftOptions(**kw)).result.small_batch
    finally:
        mp.undo()
    return seen.get("estimate"), measured


def _model(model):
    try:
        return str(rm.model_file(model))
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def _khmer_lines() -> np.ndarray:
    rng = np.random.default_rng(2)
    gray = np.stack([_text_image(rng, 48, 256, 1)[:, :, 0] for _ in range(16)]).astype(np.float32)
    return ((gray / 255.0 - 0.5) / 0.5)[:, None]


CASES = {
    "digits_cnn.ts": lambda: (str(SAMPLE_MODELS / "digits_cnn.ts"), str(SAMPLE_MODELS / "data/digits/reference"), {"mismatch_samples": 256}),
    "ppocr_det": lambda: (_model(rm.PPOCR_DET), _ppocr_batch(32, 96, 160, 3, seed=1), {"batch_size": 8, "train_batch_size": 8, "mismatch_samples": 32}),
    "ppocr_cls": lambda: (_model(rm.PPOCR_CLS), _ppocr_batch(64, 48, 192, 1, seed=2), {"batch_size": 16, "mismatch_samples": 64}),
    "khmer_crnn": lambda: (
        _model(rm.KHMER_CRNN), _khmer_lines(),
        {"arch": f"{rm.package_file('khmer-ocr-ocm', 'khmer_ocr_ocm/model.py')}:CRNN", "batch_size": 4, "train_batch_size": 4, "mismatch_samples": 16},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_estimate_bounds_what_the_pass_measures(case):
    """On sample and real trained models (a CNN on its digits; PP-OCR's DBNet detector and
    direction classifier on rendered text; the Khmer CTC CRNN): the pass's worst layer is within
    1.1x of the estimate's worst and no layer measures 2x its estimate (the margin behind
    skipping below half of BN201's threshold); the first BN layer is exact."""
    model, data, kw = CASES[case]()
    estimate, measured = _estimated(model, data, **kw)
    assert estimate, "the main pass kept per-sample moments of every layer"
    assert measured.train_pass is True
    worst_estimate = max(sc.mean_scatter for sc in estimate.values())
    assert measured.max_mean_scatter <= 1.1 * worst_estimate
    for name, sc in estimate.items():
        if sc.mean_scatter > 1e-3 * worst_estimate:
            assert measured.layers[name].mean_scatter < 2.0 * sc.mean_scatter, name
    first = next(iter(estimate))
    assert measured.layers[first].mean_scatter == pytest.approx(estimate[first].mean_scatter, rel=1e-4)
    assert math.isfinite(worst_estimate)


def test_cli_train_pass_option(tmp_path):
    runner = CliRunner()
    model, data = SAMPLE_MODELS / "digits_cnn.ts", SAMPLE_MODELS / "data/digits/reference"
    bad = runner.invoke(app, ["drift", str(model), str(data), "--train-pass", "never"])
    assert bad.exit_code == 2 and "--train-pass must be auto or always" in bad.output
    out = tmp_path / "r.json"
    ok = runner.invoke(app, ["drift", str(model), str(data), "--train-pass", "always", "-f", "json", "-o", str(out)])
    assert ok.exit_code in (0, 1), ok.output
    assert json.loads(out.read_text())["drift"]["small_batch"]["train_pass"] is True


def test_the_html_report_says_the_pass_was_skipped(fitted):
    model, x = fitted
    report = bncheck.drift(model, x, options=DriftOptions(mismatch_samples=128, channels=True))
    from bncheck.formats import get_renderer

    html = get_renderer("html")(report)
    assert "The train-mode pass was skipped (--train-pass auto)" in html
