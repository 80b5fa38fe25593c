"""Regenerate the golden files: ``python tests/golden/record.py`` (from the repository root).
Review ``git diff tests/golden/expected`` before committing: every change is a change users see."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import CASES, FOLDER, ROOT, normalise  # noqa: E402
from runner import run_case  # noqa: E402


def main() -> None:
    FOLDER.mkdir(exist_ok=True)
    for name, argv in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            code, out = run_case(argv, tmp)
            (FOLDER / f"{name}.txt").write_text(f"exit {code}\n" + normalise(out, tmp), encoding="utf-8")
            print(f"{name}: exit {code}")


if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    main()
