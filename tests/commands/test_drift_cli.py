"""`bncheck drift` through the real CLI on the bundled sample models and data folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bncheck.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
DIGITS = SAMPLES / "data" / "digits"
CANCER = SAMPLES / "data" / "cancer"
ARCH = f"{SAMPLES / 'architectures.py'}:digits_cnn"


def run(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result


def report_of(result) -> dict:
    return json.loads(result.stdout)


@pytest.mark.parametrize("model", ["digits_cnn.onnx", "digits_cnn.pt"])
def test_reference_folder_passes_and_shifted_folder_fails(model):
    extra = ["--arch", ARCH] if model.endswith(".pt") else []
    ref = run("drift", SAMPLES / model, DIGITS / "reference", "-f", "json", "--mismatch-samples", "0", *extra)
    assert ref.exit_code == 0, ref.output
    body = report_of(ref)
    assert body["command"] == "drift" and body["data"]["samples"] == 540 and body["data"]["batch_size"] == 32
    assert all(layer["drift"]["mean_shift"]["mean"] < 0.25 for layer in body["layers"])
    shifted = run("drift", SAMPLES / model, DIGITS / "shifted", "-f", "json", "--mismatch-samples", "0", *extra)
    assert shifted.exit_code == 1, shifted.output
    body = report_of(shifted)
    assert {f["rule"] for f in body["findings"]} & {"BN101", "BN102"}
    assert body["drift"]["first_drifting_layer"] == body["layers"][0]["name"]


def test_pixels_in_0_255_are_diagnosed_as_a_preprocessing_mismatch():
    result = run("drift", SAMPLES / "digits_cnn.onnx", DIGITS / "reference", "--scale", "1", "-f", "json", "--mismatch-samples", "0")
    assert result.exit_code == 1
    body = report_of(result)
    bn103 = [f for f in body["findings"] if f["rule"] == "BN103"]
    assert bn103 and "255" in bn103[0]["message"]


def test_inverted_images_are_diagnosed():
    result = run("drift", SAMPLES / "digits_cnn.onnx", DIGITS / "inverted", "-f", "json", "--mismatch-samples", "0")
    body = report_of(result)
    bn103 = [f for f in body["findings"] if f["rule"] == "BN103"]
    assert bn103 and "invert" in bn103[0]["message"]


def test_csv_rows_through_the_mlp():
    ok = run("drift", SAMPLES / "cancer_mlp.onnx", CANCER / "reference.csv", "-f", "json", "--mismatch-samples", "0")
    # 171 shifted rows: the per-layer shifts (mean |z| 0.29-0.51) are a warning beyond their noise
    # (BN101 on bn2); what fails the gate is what they do to the outputs (BN301, accuracy both ways)
    bad = run("drift", SAMPLES / "cancer_mlp.onnx", CANCER / "shifted.csv", "-f", "json", "--labels", CANCER / "shifted_labels.csv")
    assert ok.exit_code == 0, ok.output
    assert bad.exit_code == 1
    body = report_of(bad)
    first = body["layers"][0]
    assert first["name"] == "/input_norm/BatchNormalization" and first["drift"]["mean_shift"]["max"] > 1.0
    found = {(f["rule"], f["layer"], f["severity"]) for f in body["findings"]}
    assert ("BN101", "/bn2/BatchNormalization", "warning") in found and ("BN301", None, "error") in found
    assert body["drift"]["train_eval"]["accuracy_population"] > body["drift"]["train_eval"]["accuracy_stored"]


def test_train_mode_analyses_run_on_a_bounded_subsample():
    result = run("drift", SAMPLES / "digits_cnn.onnx", DIGITS / "reference", "-f", "json", "--mismatch-samples", "64", "--train-batch-size", "4")
    body = report_of(result)
    assert body["drift"]["small_batch"]["samples"] == 64 and body["drift"]["small_batch"]["batch_size"] == 4
    assert body["drift"]["train_eval"]["samples"] == 64


def test_markdown_and_junit_outputs(tmp_path):
    md = run("drift", SAMPLES / "digits_cnn.onnx", DIGITS / "shifted", "-f", "markdown", "--mismatch-samples", "0")
    assert "mean \\|z\\|" in md.stdout and "FAILED" in md.stdout
    out = tmp_path / "drift.xml"
    junit = run("drift", SAMPLES / "digits_cnn.onnx", DIGITS / "shifted", "-f", "junit", "--output", out, "--mismatch-samples", "0")
    assert junit.exit_code == 1 and out.read_text().count("<testcase") == 3


@pytest.mark.parametrize(
    "data,needle",
    [("empty", "empty"), ("missing", "does not exist")],
)
def test_bad_data_exits_2(tmp_path, data, needle):
    folder = tmp_path / data
    if data == "empty":
        folder.mkdir()
    result = run("drift", SAMPLES / "digits_cnn.onnx", folder)
    assert result.exit_code == 2
    assert needle in result.output.lower() and "Traceback" not in result.output


def test_state_dict_without_arch_says_to_pass_arch():
    result = run("drift", SAMPLES / "digits_cnn.pt", DIGITS / "reference")
    assert result.exit_code == 2 and "--arch" in result.output


def test_wrong_shape_exits_2(tmp_path):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((4, 3, 8, 8), np.float32))
    result = run("drift", SAMPLES / "digits_cnn.onnx", tmp_path / "x.npy")
    assert result.exit_code == 2 and "shape" in result.output.lower()


def test_bn102_says_which_way_the_variance_moved():
    """The shifted digits have less contrast: BN102 said "i.e. x2.13 or x0.47" for channel 6,
    the wrong direction first; it names the data's variance against the stored one."""
    import math

    body = report_of(run("drift", SAMPLES / "digits_cnn.onnx", DIGITS / "shifted", "-f", "json", "--mismatch-samples", "0", "--channels"))
    findings = [f for f in body["findings"] if f["rule"] == "BN102"]
    assert findings
    for finding in findings:
        layer = next(layer for layer in body["layers"] if layer["name"] == finding["layer"])
        channel = layer["drift"]["var_log_ratio"]["channel"]
        stats = body["channels"][finding["layer"]]
        ratio = (stats["var"][channel] + layer["eps"]) / (stats["running_var"][channel] + layer["eps"])
        assert f"at channel {channel}: data variance x{ratio:.3g} the stored one" in finding["message"], finding
        assert " or x" not in finding["message"] and math.isclose(abs(math.log(ratio)), layer["drift"]["var_log_ratio"]["max"], rel_tol=1e-4)


def test_one_sample_is_refused_not_judged(tmp_path, cli, assert_usage_error):
    """One image: the fully connected BN sees one value per channel (variance 0), and no noise
    level can be measured; drift gave BN101/BN102 errors it cannot back up. Now exit 2."""
    import shutil

    image = sorted((SAMPLES / "data" / "digits" / "reference").rglob("*.png"))[0]
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(image, folder / image.name)
    line = assert_usage_error(cli("drift", SAMPLES / "digits_cnn.onnx", folder), "1 sample", "at least 2")
    assert "BN101" not in line
    two = tmp_path / "two"
    two.mkdir()
    for path in sorted((SAMPLES / "data" / "digits" / "reference").rglob("*.png"))[:2]:
        shutil.copy(path, two / path.name)
    assert cli("drift", SAMPLES / "digits_cnn.onnx", two).exit_code in (0, 1)


@pytest.mark.parametrize("limit", ["8", "20", "50", "100"])
def test_limit_on_the_clean_class_folders_passes(limit):
    """``--limit`` on the clean digits folder (class folders 0-9 in sorted order) reads files
    spread over all of them: the gate passes as on the whole folder (its first 50 files are all
    zeros, which failed BN101/BN102 with errors), every class is present, and the text report
    says how the files were chosen."""
    result = run("drift", SAMPLES / "digits_cnn.onnx", DIGITS / "reference", "--limit", limit, "-f", "json")
    assert result.exit_code == 0, result.output
    body = report_of(result)
    assert not [f for f in body["findings"] if f["severity"] in ("warning", "error")], body["findings"]
    data = body["data"]
    assert data["samples"] == int(limit) and data["samples_available"] == 540
    assert data["limit_spread"] == {"files": int(limit), "of": 540}
    text = run("drift", SAMPLES / "digits_cnn.onnx", DIGITS / "reference", "--limit", limit)
    assert f"{limit} samples, batch size 32 ({limit} of its 540 files, spread evenly over it)" in " ".join(text.stdout.split())
