"""``bncheck config`` through the real CLI: every setting, its value and where it came from
(default, the config file, a BNCHECK_* variable, an option), as JSON and as a table."""

from __future__ import annotations

import json

import pytest

from bncheck.config import SETTING_KEYS, env_name

#: a valid value for every setting, as an environment variable would give it
ENV_VALUES = {
    "fail_on": "warning", "select": "BN1,BN2", "ignore": "BN011", "thresholds": "BN101.error=2.5;BN006.max_initial_weight=0.05",
    "train_batch_size": "8", "format": "markdown", "mismatch_samples": "0", "class_axis": "-1", "progress": "never",
    "arrays": "batch", "batch_size": "16", "channel_order": "bgr", "columns": "a,b", "crop": "7", "grayscale": "true",
    "labels": "none", "layout": "nhwc", "limit": "5", "mean": "0.5", "nan": "keep", "prefetch": "3", "preprocess": "mod:fn",
    "resample": "nearest", "scale": "1/127.5", "size": "9,9", "std": "0.25", "strict": "1", "workers": "0",
}


def _settings(cli, *args):
    run = cli("config", "-f", "json", *args)
    assert run.exit_code == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A project folder with no config file in it or above it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_setting_can_come_from_its_variable(cli, here, monkeypatch):
    assert set(ENV_VALUES) == set(SETTING_KEYS)  # a new setting needs its row here
    for key, value in ENV_VALUES.items():
        monkeypatch.setenv(env_name(key), value)
    document = _settings(cli)
    assert document["config_file"] is None
    for key in SETTING_KEYS:
        row = document["settings"][key.replace("_", "-")]
        assert (row["source"], row["from"], row["env"]) == ("env", env_name(key), env_name(key)), key
    values = {key: row["value"] for key, row in document["settings"].items()}
    assert values["thresholds"] == {"BN101": {"error": 2.5}, "BN006": {"max_initial_weight": 0.05}}
    assert values["select"] == ["BN1", "BN2"] and values["size"] == [9, 9] and values["crop"] == [7, 7]
    assert values["scale"] == pytest.approx(1 / 127.5) and values["strict"] is True and values["workers"] == 0


def test_each_value_says_where_it_came_from(cli, here, monkeypatch):
    (here / "pyproject.toml").write_text(
        '[tool.bncheck]\nfail-on = "never"\nbatch-size = 16\nlimit = 10\n\n[tool.bncheck.thresholds]\nBN101 = { error = 2.0 }\n\n'
        '[tool.bncheck.data]\nchannel-order = "bgr"\n'
    )
    monkeypatch.setenv("BNCHECK_BATCH_SIZE", "8")
    monkeypatch.setenv("BNCHECK_LIMIT", "20")
    rows = _settings(cli, "--limit", "30", "-t", "BN102.error=3")["settings"]
    config = str(here / "pyproject.toml")
    assert rows["fail-on"] == {"value": "never", "source": "file", "from": config, "env": "BNCHECK_FAIL_ON"}
    assert rows["channel-order"]["from"] == f"{config} [tool.bncheck.data]"
    assert (rows["batch-size"]["value"], rows["batch-size"]["source"]) == (8, "env")  # env over file
    assert (rows["limit"]["value"], rows["limit"]["from"]) == (30, "--limit")  # option over env over file
    assert rows["thresholds"]["value"] == {"BN101": {"error": 2.0}, "BN102": {"error": 3.0}}
    assert rows["thresholds"]["from"] == f"{config}, --threshold"
    assert (rows["nan"]["value"], rows["nan"]["source"], rows["nan"]["from"]) == ("exclude", "default", None)


def test_the_table_names_the_file_variables_and_options(cli, here, monkeypatch):
    (here / "bncheck.toml").write_text('[tool.bncheck]\nfail-on = "info"\n\n[tool.bncheck.data]\nlayout = "nhwc"\n')
    monkeypatch.setenv("BNCHECK_IGNORE", "BN011")
    run = cli("config", "--batch-size", "4")
    assert run.exit_code == 0 and run.stderr == ""
    rows: dict[str, list[str]] = {}
    last = ""
    for line in (line for line in run.stdout.splitlines() if line.startswith("│")):
        name, *cells = [cell.strip() for cell in line.split("│")[1:5]]
        if name:
            rows[name], last = cells, name
        else:  # a long path folded onto the next line
            rows[last] = [f"{a} {b}".strip() if b else a for a, b in zip(rows[last], cells, strict=True)]
    assert rows["fail-on"] == ["info", str(here / "bncheck.toml"), "BNCHECK_FAIL_ON"]
    assert rows["layout"] == ["nhwc", f"{here / 'bncheck.toml'} [tool.bncheck.data]", "BNCHECK_LAYOUT"]
    assert rows["ignore"] == ["BN011", "BNCHECK_IGNORE", "BNCHECK_IGNORE"]
    assert rows["batch-size"] == ["4", "--batch-size", "BNCHECK_BATCH_SIZE"]
    assert rows["nan"] == ["exclude", "default", "BNCHECK_NAN"]


def test_a_config_file_typo_is_refused_here_too(cli, assert_usage_error, here):
    (here / "bncheck.toml").write_text("[tool.bncheck]\nbatch-sise = 3\n")
    assert_usage_error(cli("config"), "'batch-sise'", "'batch-size'")
