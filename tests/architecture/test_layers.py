"""The house rules of docs/architecture.md, checked on the package itself: the import-linter
contracts in pyproject.toml (layers and their direction of flow)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_are_kept():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(lint).exists():
        pytest.fail("lint-imports is not installed: pip install -r requirements/test.txt (import-linter)")
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_contracts_docs_architecture_describes_are_declared():
    """Deleting a contract would keep lint-imports green; the house's contracts stay declared."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    by_type = {}
    for contract in contracts:
        by_type.setdefault(contract["type"], []).append(contract)
    assert by_type.get("layers") and by_type.get("acyclic_siblings")
    assert by_type["acyclic_siblings"][0]["ancestors"] == ["bncheck"]
    forbidden = {(tuple(c["source_modules"]), tuple(c["forbidden_modules"])) for c in by_type.get("forbidden", [])}
    families = ("bncheck.backends.onnx", "bncheck.backends.torch")
    assert (families, ("bncheck.backends.load",)) in forbidden
    assert (("bncheck.backends.onnx",), ("bncheck.backends.torch",)) in forbidden
    (door,) = [c for c in by_type["forbidden"] if tuple(c["forbidden_modules"]) == families]
    assert {"bncheck.commands", "bncheck.engines", "bncheck.rules", "bncheck.report", "bncheck.formats", "bncheck.cli"} <= set(door["source_modules"])
