"""`bncheck recalibrate` through the CLI on the sample models: accuracy recovery on the shifted
digits, output families, and the refusals (exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bncheck.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
SHIFTED = SAMPLES / "data" / "digits" / "shifted"
ARCH = f"{SAMPLES / 'architectures.py'}:digits_cnn"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    "model,out,extra",
    [
        ("digits_cnn.onnx", "out.onnx", []),
        ("digits_cnn.pt", "out.pt", ["--arch", ARCH]),
        ("digits_cnn.safetensors", "out.safetensors", ["--arch", ARCH]),
        ("digits_cnn.ts", "out.ts", []),
        ("digits_cnn.pt2", "out.pt2", []),
    ],
)
def test_shifted_digits_recover_accuracy_in_every_family(tmp_path, model, out, extra):
    target = tmp_path / out
    result = run("recalibrate", SAMPLES / model, SHIFTED, "--out", target, "-f", "json", "--verify", "--holdout", "0", *extra)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    acc = body["recalibration"]["accuracy"]
    assert acc["before"] == pytest.approx(0.85, abs=0.01)
    assert acc["after"] > 0.97
    assert all(layer["after"]["mean_shift"]["mean"] < 0.01 for layer in body["layers"])
    assert target.exists()
    again = run("drift", target, SHIFTED, "-f", "json", "--mismatch-samples", "0", *extra)
    assert again.exit_code == 0, again.output


def test_state_dict_output_loads_with_weights_only(tmp_path):
    import torch

    out = tmp_path / "re.pt"
    assert run("recalibrate", SAMPLES / "digits_cnn.pt", SHIFTED, "--out", out, "--arch", ARCH, "-q", "--holdout", "0").exit_code == 0
    state = torch.load(out, weights_only=True)
    assert "bn1.running_mean" in state and int(state["bn1.num_batches_tracked"]) == 17


def test_refuses_to_overwrite_model_or_out(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes((SAMPLES / "digits_cnn.onnx").read_bytes())
    before = model.read_bytes()
    same = run("recalibrate", model, SHIFTED, "--out", model)
    assert same.exit_code == 2 and "overwrite" in same.output and model.read_bytes() == before
    out = tmp_path / "o.onnx"
    out.write_text("keep me")
    exists = run("recalibrate", model, SHIFTED, "--out", out)
    assert exists.exit_code == 2 and "--force" in exists.output and out.read_text() == "keep me"
    forced = run("recalibrate", model, SHIFTED, "--out", out, "--force", "-q")
    assert forced.exit_code == 0 and out.read_bytes() != b"keep me"


def test_bad_data_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "o.onnx"
    result = run("recalibrate", SAMPLES / "digits_cnn.onnx", empty, "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.output and not out.exists()
    assert list(tmp_path.iterdir()) == [empty]


def test_onnx_cannot_become_torch_and_state_dict_needs_arch(tmp_path):
    a = run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "--out", tmp_path / "o.safetensors")
    assert a.exit_code == 2 and "ONNX" in a.output
    b = run("recalibrate", SAMPLES / "digits_cnn.pt", SHIFTED, "--out", tmp_path / "o.pt")
    assert b.exit_code == 2 and "--arch" in b.output


@pytest.mark.parametrize("args,needle", [(["--method", "magic"], "--method"), (["--variance", "x"], "--variance"), (["--layers", "nope"], "nope")])
def test_bad_options(tmp_path, args, needle):
    result = run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "--out", tmp_path / "o.onnx", *args)
    assert result.exit_code == 2 and needle in result.output


def test_table_and_markdown_show_before_and_after(tmp_path):
    table = run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "--out", tmp_path / "a.onnx", "--verify")
    assert "85.0% -> 98.7%" in table.stdout and "before" in table.stdout
    md = run("recalibrate", SAMPLES / "digits_cnn.onnx", SHIFTED, "--out", tmp_path / "b.onnx", "-f", "markdown")
    assert "### Recalibration" in md.stdout
