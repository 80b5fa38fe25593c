"""What fold and recalibrate share on the command line (bncheck.cli.model_options): OUT from
``--out`` or from the contract's ``-o OUT``, and refusals that name the option the user typed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
DATA = SAMPLES / "data" / "digits" / "shifted"

#: command -> its arguments before OUT
COMMANDS = {"fold": [], "recalibrate": [DATA]}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(("flag", "named"), [("-o", "-o/--output"), ("--output", "-o/--output"), ("--out", "--out")])
def test_refusing_to_overwrite_the_model_names_the_option_typed(tmp_path, cli, assert_usage_error, command, flag, named):
    model = tmp_path / "m.onnx"
    shutil.copy(SAMPLES / "digits_cnn.onnx", model)
    before = model.read_bytes()
    result = cli(command, model, *COMMANDS[command], flag, model, "--force")
    line = assert_usage_error(result, "refusing to overwrite the input model", f"with {named};")
    if flag != "--out":
        assert "--out;" not in line  # the user never typed --out
    assert model.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_report_file_after_o_is_no_out(cli, assert_usage_error, command, tmp_path):
    result = cli(command, SAMPLES / "digits_cnn.onnx", *COMMANDS[command], "-o", tmp_path / "run.json")
    assert_usage_error(result, "give -o OUT", "--out FILE")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", list(COMMANDS))
def test_o_naming_a_directory_or_a_report_says_so(cli, assert_usage_error, command, tmp_path):
    """``fold MODEL -o some/dir`` said "give -o OUT" as though no -o had been typed."""
    model = SAMPLES / "digits_cnn.onnx"
    line = assert_usage_error(cli(command, model, *COMMANDS[command], "-o", tmp_path), f"-o/--output {tmp_path} is a directory", "--out FILE")
    assert ".safetensors" in line
    line = assert_usage_error(cli(command, model, *COMMANDS[command], "-o", tmp_path / "run.json"), "names the report, not a model file")
    assert "--out FILE" in line and ".onnx" in line
    assert list(tmp_path.iterdir()) == []
