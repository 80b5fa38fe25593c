"""``bncheck rules`` on a narrow terminal: rule codes and names are copied into --select and
--ignore, so they are never broken across lines; only the explanation wraps."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("width", [60, 80, 100])
def test_codes_and_names_stay_on_one_line(width):
    from typer.testing import CliRunner

    from bncheck.cli.app import app
    from bncheck.rules.docs import rule_rows

    result = CliRunner().invoke(app, ["rules"], env={"COLUMNS": str(width), "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= width and "…" not in result.stdout
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    rows = rule_rows()
    firsts = [cell for cell in cells if cell[0]]  # a rule's first line: its code, name and severity
    assert [(c[0], c[1], c[2]) for c in firsts] == [(r["code"], r["name"], r["severity"]) for r in rows]
    # the lines that continue a rule carry only its explanation
    assert all(cell[:3] == ["", "", ""] for cell in cells if not cell[0])
