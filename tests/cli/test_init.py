"""``bncheck --version`` answers before typer, numpy or a model runtime is imported
(bncheck/cli/__init__.py), and ``import bncheck`` imports its API on first use (PEP 562)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bncheck
from bncheck.cli import version_only

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("typer", "click", "rich", "numpy", "torch", "onnx", "onnxruntime")


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_version_imports_nothing_heavy():
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['bncheck', '--version']\n"
        "from bncheck.cli import main\n"
        "main()\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r})))\n"
    )
    result = _python("-c", probe)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"bncheck {bncheck.__version__}"
    assert json.loads(lines[1].replace("'", '"')) == []


def test_version_is_fast_in_a_fresh_process():
    """Under 0.2 s on an idle machine (about 0.08 s measured); the bound here is generous for
    a loaded CI runner, the best of three runs against the same bound for `python -c pass`."""
    def best(*args: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            result = _python(*args)
            times.append(time.perf_counter() - start)
            assert result.returncode == 0, result.stderr
        return min(times)

    bare = best("-c", "pass")
    version = best("-m", "bncheck", "--version")
    assert version - bare < 0.2, (version, bare)


def test_version_output_is_the_same_as_through_typer(cli):
    fast = _python("-m", "bncheck", "--version")
    slow = cli("--version")  # the typer app's eager option
    assert fast.stdout == slow.stdout == f"bncheck {bncheck.__version__}\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--version"], True),
        (["--debug", "--version"], True),
        (["--version", "audit", "m.onnx"], True),
        (["--version", "--help"], False),
        (["audit", "--version"], False),
        ([], False),
    ],
)
def test_version_only_reads_the_line_as_typer_does(args, expected):
    assert version_only(args) is expected


def test_the_api_names_import_on_first_use():
    result = _python(
        "-c",
        "import sys, bncheck\n"
        "assert 'bncheck.commands.audit' not in sys.modules\n"
        "from bncheck import audit, Report, Severity, load_report\n"
        "assert callable(audit) and bncheck.Report is Report\n"
        "assert set(bncheck.__all__) <= set(dir(bncheck))\n"
        "print('ok')\n",
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_every_public_name_resolves():
    for name in bncheck.__all__:
        assert getattr(bncheck, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        bncheck.nothing_here  # noqa: B018
