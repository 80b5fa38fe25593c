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
from PIL import Image
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
from bncheck.commands import drift_diagnosis as diagnostics


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
    # what the model expects and what DATA has, in pixels after --scale (the units of --mean/--std)
    assert "in pixels after --scale (the units of --mean/--std), the model expects mean ≈" in finding["message"]
    assert "under the current `--mean 0,0,0 --std 1,1,1`; DATA has mean" in finding["message"]
    inference = before["drift"]["input_diagnosis"]["inference"]
    assert inference["affine"] is True and len(inference["expected"]["std"]) == 3
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted(folders["same"].glob("*.png"))]) / 255.0
    np.testing.assert_allclose(inference["pixels"]["data"]["mean"], pixels.mean(axis=(0, 1, 2)), rtol=1e-3)
    # one quantity before -> after: the nearest layer's drift score, the headline's figure (all 64 samples)
    diagnosis = before["drift"]["input_diagnosis"]
    assert np.isclose(diagnosis["baseline_first_layer"], first_score(before), rtol=1e-3)
    assert f"goes from {first_score(before):.3g} to {best['first_layer_score']:.3g}" in finding["message"]
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
    report = drift(models["onnx"], folders["inverted"], *OPTIONS)
    (finding,) = bn103(report)
    assert "inverting the input (255 - pixel)" in finding["message"]
    # the inversion in the user's own options: --scale negated, --mean moved by a white pixel
    (inverted,) = [c for c in report["drift"]["input_diagnosis"]["candidates"] if c["description"].startswith("inverting")]
    words = shlex.split(inverted["options"])
    assert words[0] == "--scale=-0.00392157" and words[1].startswith("--mean=-")
    mean = np.array([float(v) for v in words[1].split("=", 1)[1].split(",")])
    np.testing.assert_allclose(mean, np.array(TRAIN_MEAN) - 1.0, atol=1e-4)
    assert words[2:] == ["--std", ",".join(f"{v:.4g}" for v in TRAIN_STD)]
    fixed = drift(models["onnx"], folders["inverted"], *words)  # applied, the inverted images fit again
    assert not bn103(fixed) and first_score(fixed) < 0.01 < first_score(report)


def test_a_named_slip_is_said_beside_the_inferred_fix(rgb, tmp_path):
    """Channels swapped AND the red one brightened: the inferred --mean/--std fixes more than
    the channel swap alone, and the finding names the swap too, with its option and its score."""
    models, folders = rgb
    test = smooth_images(64, seed=1)[..., ::-1].astype(np.int64)
    test[..., 0] += 30
    both = write_images(tmp_path / "bgr_brighter", np.clip(test, 0, 255).astype(np.uint8))
    report = drift(models["onnx"], both, *OPTIONS)
    (finding,) = bn103(report)
    diagnosis = report["drift"]["input_diagnosis"]
    assert diagnosis["best"]["description"].startswith(diagnostics.INFERRED)
    also = diagnosis["also"]
    assert also["options"] == "--channel-order bgr" and also["score"] <= 0.9 * diagnosis["baseline"]
    assert also["first_layer_score"] <= 0.9 * diagnosis["baseline_first_layer"]
    assert (
        f"of the usual slips, swapping the channel order (RGB -> BGR) (`--channel-order bgr`) helps most: "
        f"{diagnosis['baseline_first_layer']:.3g} to {also['first_layer_score']:.3g}"
    ) in finding["message"]


def test_grey_images_stored_as_rgb_get_one_mean_and_std(rgb, tmp_path):
    """DATA's three channels copies of one another: a per-channel fit cannot tell them apart, so
    the expected input is fitted with one map for all channels and said with one value each."""
    models, _ = rgb
    grey = smooth_images(64, seed=2).astype(np.float64).mean(axis=-1)
    folder = write_images(tmp_path / "grey", np.repeat(grey[..., None], 3, axis=-1).astype(np.uint8))
    report = drift(models["onnx"], folder)  # --mean/--std forgotten as well
    inference = report["drift"]["input_diagnosis"]["inference"]
    assert inference["tied"] == diagnostics.COPIED and "tied_fit" not in inference
    inferred = [c for c in report["drift"]["input_diagnosis"]["candidates"] if c["description"].startswith(diagnostics.INFERRED)]
    assert [c["description"] for c in inferred] == [diagnostics.INFERRED + " mean/std, " + diagnostics.ONE_FOR_ALL]
    words = shlex.split(inferred[0]["options"])
    assert words[0] == "--mean" and "," not in words[1] and words[2] == "--std" and "," not in words[3]
    assert len(set(inference["suggested"]["std"])) == 1
    (finding,) = bn103(report)
    assert diagnostics.COPIED in finding["message"]


def test_a_per_channel_fit_no_pipeline_would_have_is_not_offered():
    """Scales 19x apart on channels DATA spreads alike (grey text lines, slightly tinted) are
    no preprocessing: the per-channel fit is replaced by one for all channels; scales close
    together, or channels DATA spreads differently, keep it."""
    alike = np.array([0.2286, 0.2286, 0.2235])
    why = diagnostics._implausible(np.array([0.078, 1.45, 0.15]), alike)
    assert why.startswith("a fit per channel needs scales 18.6x apart")
    assert diagnostics._implausible(np.array([1.0, 1.2, 0.9]), alike) == ""
    assert diagnostics._implausible(np.array([0.078, 1.45, 0.15]), np.array([0.05, 0.2, 0.1])) == ""
    assert diagnostics._implausible(np.array([1.0]), np.array([0.2])) == ""


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
    # in pixel units under the right --mean/--std the model expects the training pixels' mean
    # (numpy on the images its statistics were accumulated on); DATA has the shifted one
    pixels = report["drift"]["input_diagnosis"]["inference"]["pixels"]
    train = smooth_images(256).astype(np.float64) / 255.0
    np.testing.assert_allclose(pixels["expected"]["mean"], train.mean(axis=(0, 1, 2)), atol=0.01)
    np.testing.assert_allclose(pixels["expected"]["std"], train.std(axis=(0, 1, 2)), rtol=0.06)
    np.testing.assert_allclose(np.array(pixels["data"]["mean"]) - train.mean(axis=(0, 1, 2)), [40 / 255, 0, 0], atol=0.01)
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


@pytest.mark.parametrize("cap", [10, 0])
def test_the_diagnosis_reads_at_most_diagnosis_samples(rgb, monkeypatch, cap):
    """--diagnosis-samples caps what the diagnosis reads: every batch of samples it measures
    (bncheck.commands.drift_diagnosis.array_moments, through which all its runs go) holds at
    most that many; 0 turns it off."""
    models, folders = rgb
    seen = []
    real = diagnostics.array_moments

    def counting(runner, x, batch_size, layers):
        seen.append(len(x))
        return real(runner, x, batch_size, layers)

    monkeypatch.setattr(diagnostics, "array_moments", counting)
    report = drift(models["onnx"], folders["same"], "--diagnosis-samples", str(cap))
    if cap == 0:
        assert seen == [] and report["drift"]["input_diagnosis"] is None
        return
    assert max(seen) == cap and report["drift"]["input_diagnosis"]["samples"] == cap
    assert f"re-measured on {cap} samples" in bn103(report)[0]["message"]


def test_the_simpler_fit_is_preferred_and_then_said():
    """The choice among the inferred fixes: a named correction within 1.25x of the best score
    first, then one mean/std for all channels within 1.25x of the per-channel fit; where the
    latter wins, the inference says its figures (the per-channel ones kept beside)."""
    per_channel = {"description": diagnostics.INFERRED + " mean/std", "options": "--mean 0.1,0.2,0.3 --std 1,2,3", "score": 0.010, "first_layer_score": 0.01}
    one = {"description": diagnostics.INFERRED + " mean/std, " + diagnostics.ONE_FOR_ALL, "options": "--mean 0.2 --std 2", "score": 0.012, "first_layer_score": 0.01}
    swap = {"description": "swapping the channel order (RGB -> BGR)", "options": "--channel-order bgr", "score": 0.0124, "first_layer_score": 0.01}
    far = {**one, "score": 0.02}
    assert diagnostics._best([per_channel, one, swap], 0.1) is swap
    assert diagnostics._best([per_channel, one], 0.1) is one
    assert diagnostics._best([per_channel, far], 0.1) is per_channel
    assert diagnostics._best([per_channel, one], 0.015) is None  # nothing halves the drift
    inference = {"affine": True, "expected": {"std": [1, 2, 3]}, "suggested": {"std": [1, 2, 3]}, "tied_fit": {"expected": {"std": [2, 2, 2]}, "suggested": {"std": [2, 2, 2]}}}
    said = diagnostics._winning_fit(inference, one)
    assert said["suggested"] == {"std": [2, 2, 2]} and said["tied"] == diagnostics.ONE_FOR_ALL_WHY and "tied_fit" not in said
    assert said["per_channel_fit"]["suggested"] == {"std": [1, 2, 3]}
    assert diagnostics._winning_fit(inference, per_channel) is inference
