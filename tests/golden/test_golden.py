"""The reports of a fixed set of commands on the sample models, byte for byte after removing
timings, paths, versions and float noise (see cases.py; regenerate with record.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import CASES, FOLDER, normalise  # noqa: E402
from runner import run_case  # noqa: E402

pytest.importorskip("torch")


@pytest.mark.parametrize(("name", "argv"), CASES, ids=[c[0] for c in CASES])
def test_golden(name: str, argv: list[str], tmp_path: Path) -> None:
    expected = (FOLDER / f"{name}.txt").read_text(encoding="utf-8")
    code, out = run_case(argv, str(tmp_path))
    got = f"exit {code}\n" + normalise(out, str(tmp_path))
    assert got == expected, f"{name} changed; if intended, run python tests/golden/record.py and review the diff"
