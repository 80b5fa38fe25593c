"""The README's promises: its test command is the one CI runs, its rule table is current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _fenced_commands(text: str) -> list[str]:
    return [line.strip() for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_lines = [line for line in _fenced_commands(readme) if "pytest" in line]
    assert test_lines, "the README must show the test command"
    assert test_lines[0] in ci.splitlines(), "the README test command must be the line .ci/run runs"


def test_readme_rule_table_is_generated_from_the_registry():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_readme.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_readme_lists_every_rule():
    import bncheck.rules
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for code in bncheck.rules.REGISTRY:
        assert f"| {code} |" in readme
