"""bncheck/config.py through the real CLI: a key bncheck does not read is an error that names
it and the nearest valid key (a typo must never silently drop a gate setting); ``BNCHECK_*``
variables sit between the config file and the options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bncheck.config import CONFIG_KEYS, DATA_KEYS, ENV_NAMES

DIGITS = Path(__file__).resolve().parents[1] / "sample_models" / "digits_cnn.onnx"


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('[tool.bncheck]\nfial-on = "warning"\n', ["'fial-on'", "did you mean 'fail-on'?"]),
        ("[tool.bncheck]\nbatch-sise = 3\n", ["'batch-sise'", "'batch-size'"]),
        ('[tool.bncheck]\nignroe = ["BN003"]\n', ["'ignroe'", "'ignore'"]),
        ('[tool.bncheck.data]\nchanel-order = "bgr"\n', ["[tool.bncheck.data]", "'chanel-order'", "'channel-order'"]),
        ("[tool.bncheck]\nzzzz = 1\n", ["'zzzz'", "valid keys:", "fail-on"]),
    ],
)
def test_unknown_keys_name_the_nearest_valid_one(cli, assert_usage_error, tmp_path, text, needles):
    config = tmp_path / "bncheck.toml"
    config.write_text(text)
    assert_usage_error(cli("audit", DIGITS, "--config", config), str(config), *needles)


def test_every_documented_key_is_accepted(cli, tmp_path):
    config = tmp_path / "bncheck.toml"
    config.write_text('[tool.bncheck]\nfail-on = "error"\ntrain-batch-size = 8\nmismatch-samples = 0\nbatch-size = 16\nchannel-order = "rgb"\n\n[tool.bncheck.data]\nlayout = "nchw"\n')
    assert cli("audit", DIGITS, "--config", config, "-q").exit_code == 0
    assert {"fail_on", "thresholds", "format", "data"} <= set(CONFIG_KEYS) and "channel_order" in DATA_KEYS


SHIFTED = DIGITS.parent / "data" / "digits" / "shifted"


def _drift(cli, *extra):
    """drift of the digits model on 64 shifted images: three BN warnings, no error."""
    return cli("drift", DIGITS, SHIFTED, "--mismatch-samples", "0", *extra)


def test_environment_variables_sit_between_the_config_file_and_the_options(cli, tmp_path, monkeypatch):
    config = tmp_path / "bncheck.toml"
    config.write_text('[tool.bncheck]\nfail-on = "never"\nlimit = 32\n')
    monkeypatch.setenv("BNCHECK_LIMIT", "48")
    monkeypatch.setenv("BNCHECK_FORMAT", "json")
    assert _drift(cli, "--config", config).exit_code == 0  # the file's fail-on never
    monkeypatch.setenv("BNCHECK_FAIL_ON", "warning")
    run = _drift(cli, "--config", config)
    assert run.exit_code == 1  # the variable beats the file: the warnings fail
    report = json.loads(run.stdout)  # BNCHECK_FORMAT
    assert report["data"]["samples"] == 48 and report["summary"]["fail_on"] == "warning"
    flagged = _drift(cli, "--config", config, "--fail-on", "error", "--limit", "64")
    assert flagged.exit_code == 0 and json.loads(flagged.stdout)["data"]["samples"] == 64  # options beat both


@pytest.mark.parametrize(
    ("name", "value", "needles"),
    [
        ("BNCHECK_FAIL_ON", "fatal", ["error, warning, info, never"]),
        ("BNCHECK_BATCH_SIZE", "abc", ["must be an integer"]),
        ("BNCHECK_THRESHOLDS", "BN101.eror=1", ["BN101", "'eror'"]),
        ("BNCHECK_THRESHOLDS", "BN101.error", ["CODE.NAME=VALUE"]),
        ("BNCHECK_MISMATCH_SAMPLES", "-1", ["at least 0"]),
        ("BNCHECK_PROGRESS", "sometimes", ["auto, always, never"]),
        ("BNCHECK_CLASS_AXIS", "last", ["axis index"]),
        ("BNCHECK_SIZE", "0", ["--size"]),
    ],
)
def test_a_bad_environment_value_is_exit_2_naming_the_variable(cli, assert_usage_error, monkeypatch, name, value, needles):
    monkeypatch.setenv(name, value)
    assert_usage_error(_drift(cli), f"environment variable {name}={value!r}", *needles)


def test_a_bad_format_variable_is_named(cli, assert_usage_error, monkeypatch):
    monkeypatch.setenv("BNCHECK_FORMAT", "xml")
    assert_usage_error(cli("audit", DIGITS), "BNCHECK_FORMAT", "'xml'", "sarif")


def test_an_unknown_bncheck_variable_warns_with_the_nearest_name(cli, monkeypatch):
    monkeypatch.setenv("BNCHECK_FIAL_ON", "warning")
    monkeypatch.setenv("BNCHECK_CI_VENV", "/tmp/venv")  # CI's own variable: no warning
    run = cli("audit", DIGITS, "-q")
    assert run.exit_code == 0  # ignored, not applied
    (warning,) = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert "BNCHECK_FIAL_ON" in warning and "did you mean BNCHECK_FAIL_ON?" in warning


def test_every_setting_has_its_variable():
    assert set(ENV_NAMES.values()) == set(CONFIG_KEYS) - {"data"}
    assert ENV_NAMES["BNCHECK_TRAIN_BATCH_SIZE"] == "train_batch_size" and ENV_NAMES["BNCHECK_CHANNEL_ORDER"] == "channel_order"


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('[tool.bncheck]\nignore = "BN999"\n', ["'ignore'", "BN999 matches no rule"]),
        ('[tool.bncheck]\nselect = ["BN1", "XX"]\n', ["'select'", "XX matches no rule"]),
        ("[tool.bncheck]\nthresholds = { BN101 = { warnign = 0.3 } }\n", ["rule BN101 has no threshold 'warnign'"]),
        (
            "[tool.bncheck]\nthresholds = { BN101 = { warning = 2.0, error = 0.5 } }\n",
            ["threshold BN101.warning (2) is above BN101.error (0.5)", "lower the warning or raise the error"],
        ),
    ],
)
def test_a_bad_rule_setting_in_the_file_names_the_file(cli, assert_usage_error, tmp_path, text, needles):
    """Unknown rule codes in select/ignore, an unknown threshold name, and a warning threshold
    above the error one: each refused with the config file named (they were said as if given on
    the command line, and the inverted thresholds were taken silently)."""
    config = tmp_path / "bncheck.toml"
    config.write_text(text)
    assert_usage_error(cli("audit", DIGITS, "--config", config), str(config), *needles)


def test_inverted_thresholds_on_the_command_line_are_refused_too(cli, assert_usage_error):
    assert_usage_error(cli("audit", DIGITS, "-t", "BN101.warning=3"), "BN101.warning (3) is above BN101.error (0.5)", "--threshold")
    assert cli("audit", DIGITS, "-t", "BN101.warning=3", "-t", "BN101.error=4").exit_code == 0
