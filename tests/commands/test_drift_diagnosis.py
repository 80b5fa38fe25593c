"""BN103's input diagnosis through the real CLI, on a small RGB CNN whose BN statistics were
accumulated on PNG images normalised with a known mean/std (tests/support/rgb_cnn.py), as
TorchScript and as ONNX: the fix is named in the user's options, it is verified by running
drift again with it, and the diagnosis runs only on the network up to the first BN layers and
only when BN103 is selected."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
from support.rgb_cnn import (
    OPTIONS,
    TRAIN_MEAN,
    TRAIN_STD,
    save_models,
    smooth_images,
    trained,
    write_images,
)
from typer.testing import CliRunner

from bncheck.backends.onnx.backend import OnnxBackend
from bncheck.backends.torch.backend import TorchBackend
from bncheck.cli.app import app


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rgb")
    models = save_models(trained(smooth_images(256)), folder)
    test = smooth_images(64, seed=1)
    shifted = test.astype(np.int64)
    shifted[..., 0] += 40
    folders = {
        "same": write_images(folder / "same", test),
        "bgr": write_images(folder / "bgr", np.ascontiguousarray(test[..., ::-1])),
        "inverted": write_images(folder / "inverted", 255 - test),
        "shifted": write_images(folder / "shifted", np.clip(shifted, 0, 255).astype(np.uint8)),
    }
    return models, folders


def drift(model, data, *extra) -> dict:
    result = CliRunner().invoke(app, ["drift", str(model), str(data), "-f", "json", "--mismatch-samples", "0", *extra])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def bn103(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["rule"] == "BN103"]


def first_score(report: dict) -> float:
    return report["layers"][0]["drift"]["score"]


def _floats(options: str, name: str) -> np.ndarray:
    words = shlex.split(options)
    return np.array([float(v) for v in words[words.index(name) + 1].split(",")])


@pytest.mark.parametrize("family", ["torch", "onnx"])
def test_a_forgotten_normalisation_is_inferred_and_the_suggestion_verified(rgb, family):
    models, folders = rgb
    before = drift(models[family], folders["same"])  # --mean/--std forgotten
    (finding,) = bn103(before)
    best = before["drift"]["input_diagnosis"]["best"]
    assert best["description"] == "normalising to the inferred mean/std"
    np.testing.assert_allclose(_floats(best["options"], "--mean"), TRAIN_MEAN, atol=0.02)
    np.testing.assert_allclose(_floats(best["options"], "--std"), TRAIN_STD, rtol=0.06)
    assert f"try `{best['options']}`" in finding["message"]
    assert "the model expects input mean ≈" in finding["message"] and "DATA has mean" in finding["message"]
    inference = before["drift"]["input_diagnosis"]["inference"]
    assert inference["affine"] is True and len(inference["expected"]["std"]) == 3
    after = drift(models[family], folders["same"], *shlex.split(best["options"]))
    assert not bn103(after) and first_score(after) < 0.01 < first_score(before)
    correct = drift(models[family], folders["same"], *OPTIONS)
    assert not bn103(correct) and first_score(correct) < 0.01


@pytest.mark.parametrize("family", ["torch", "onnx"])
def test_swapped_channels_are_named_with_the_option(rgb, family):
    models, folders = rgb
    report = drift(models[family], folders["bgr"], *OPTIONS)
    (finding,) = bn103(report)
    assert "`--channel-order bgr`" in finding["message"] and "swapping the channel order" in finding["message"]
    assert report["drift"]["input_diagnosis"]["best"]["score"] < 0.01 < report["drift"]["input_diagnosis"]["baseline"]
    fixed = drift(models[family], folders["bgr"], *OPTIONS, "--channel-order", "bgr")
    assert not bn103(fixed)


def test_an_inverted_input_is_named(rgb):
    models, folders = rgb
    (finding,) = bn103(drift(models["onnx"], folders["inverted"], *OPTIONS))
    assert "inverting the input (255 - pixel)" in finding["message"]


def test_a_per_channel_mean_shift_is_named_and_corrected(rgb):
    """+40 on the red channel only: the finding says channel 0's mean is off (by 40/255/0.2
    stored stds of the input, about 0.78 of its std on this data) and the inferred --mean moves
    that channel's mean by 40/255."""
    models, folders = rgb
    report = drift(models["onnx"], folders["shifted"], *OPTIONS)
    (finding,) = bn103(report)
    assert "channel 0's mean is off by +" in finding["message"]
    best = report["drift"]["input_diagnosis"]["best"]
    mean = _floats(best["options"], "--mean")
    np.testing.assert_allclose(mean, np.array(TRAIN_MEAN) + [40 / 255, 0, 0], atol=0.01)
    assert not bn103(drift(models["onnx"], folders["shifted"], *shlex.split(best["options"])))


@pytest.mark.parametrize("backend", [OnnxBackend, TorchBackend])
@pytest.mark.parametrize("off", [["--ignore", "BN103"], ["--select", "BN101,BN102"]])
def test_the_diagnosis_does_not_run_when_bn103_is_not_selected(rgb, monkeypatch, backend, off):
    models, folders = rgb
    family = "onnx" if backend is OnnxBackend else "torch"
    calls = []
    real = backend.first_layers_runner

    def counting(self, source, layers):
        calls.append(layers)
        return real(self, source, layers)

    monkeypatch.setattr(backend, "first_layers_runner", counting)
    report = drift(models[family], folders["same"], *off)
    assert calls == [] and report["drift"]["input_diagnosis"] is None
    assert {f["rule"] for f in report["findings"]} & {"BN101", "BN102"}  # the drift is still there
    assert bn103(drift(models[family], folders["same"])) and calls  # and selected, it runs
