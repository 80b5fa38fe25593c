"""bncheck as a user runs it, for the security tests: a fresh process in ``cwd`` with this
checkout on PYTHONPATH, so that a test sees what the whole process does (its exit code, its
stderr, the files it writes or leaves alone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def bncheck(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bncheck", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
