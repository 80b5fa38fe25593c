"""bncheck/config.py through the real CLI: a key bncheck does not read is an error that names
it and the nearest valid key (a typo must never silently drop a gate setting)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bncheck.config import CONFIG_KEYS, DATA_KEYS

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
