"""A state dict read without --arch stores no eps or momentum: the report says they are PyTorch's
defaults, assumed, and no table shows them as if read from the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
ARCH = f"{SAMPLES}/architectures.py:digits_cnn"
NOTE = (
    "the state dict stores no eps or momentum: eps 1e-5 and momentum 0.1 (PyTorch's defaults) are assumed; "
    "pass --arch FILE.py:Factory to read them from the model"
)


def _table(cli, *args):
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    result = CliRunner().invoke(app, ["audit", *map(str, args)], env={"COLUMNS": "140", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.stdout


def _rows(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in table.splitlines() if line.startswith("│")]


@pytest.mark.parametrize("name", ["digits_cnn.safetensors", "digits_cnn.pt"])
def test_state_dict_without_arch_marks_eps_and_momentum_as_assumed(cli, name):
    table = _table(cli, SAMPLES / name)
    assert NOTE in " ".join(table.split())
    rows = _rows(table)
    assert rows and all(row[4] == "1e-05*" and row[5] == "0.1*" for row in rows), table
    assert "* assumed: PyTorch's default, not stored in the model" in table
    report = json.loads(cli("audit", SAMPLES / name, "-f", "json").stdout)
    assert NOTE in report["model"]["notes"]
    assert all(layer["eps"] == 1e-5 and layer["assumed"] == ["eps", "momentum"] for layer in report["layers"])
    markdown = cli("audit", SAMPLES / name, "-f", "markdown").stdout
    assert "| 1e-05 (assumed) |" in markdown


def test_with_arch_the_values_are_read_and_not_marked(cli):
    table = _table(cli, SAMPLES / "digits_cnn.pt", "--arch", ARCH)
    rows = _rows(table)
    assert rows and all(row[4] == "1e-05" and row[5] == "0.1" for row in rows), table
    assert "assumed" not in table
    report = json.loads(cli("audit", SAMPLES / "digits_cnn.pt", "--arch", ARCH, "-f", "json").stdout)
    assert not any("assumed" in note for note in report["model"].get("notes", []))
    assert all(not layer.get("assumed") for layer in report["layers"])


def test_a_saved_report_keeps_the_marks(cli, tmp_path):
    run = tmp_path / "run.json"
    assert cli("audit", SAMPLES / "digits_cnn.safetensors", "-o", run).exit_code == 0
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    table = CliRunner().invoke(app, ["report", str(run)], env={"COLUMNS": "140", "NO_COLOR": "1"}).stdout
    assert all(row[4] == "1e-05*" for row in _rows(table)), table
