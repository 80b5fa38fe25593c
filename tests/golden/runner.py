"""Run one golden case through the real CLI, in this process, from the repository root."""

from __future__ import annotations

import os

from cases import ROOT
from typer.testing import CliRunner

from bncheck.cli.app import app


def run_case(argv: list[str], tmp: str) -> tuple[int, str]:
    args = [a.replace("{tmp}", tmp).replace("{root}", str(ROOT)) for a in argv]
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        result = CliRunner().invoke(app, args, env={"COLUMNS": "160", "NO_COLOR": "1"})
    finally:
        os.chdir(here)
    return result.exit_code, result.stdout
