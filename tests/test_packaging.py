"""Packaging promises: the README's first command works in a fresh venv, test tools are not a
public extra, and the wheel ships its type marker and report schema."""

from __future__ import annotations

import os
import re
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _requirement_lines(path: Path) -> list[str]:
    lines = [line.split(" #")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "-c", "-e"))]


def test_test_requirements_match_the_dependency_group():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    group = pyproject["dependency-groups"]["test"]
    assert _requirement_lines(ROOT / "requirements" / "test.txt") == group
    assert "test" not in pyproject["project"].get("optional-dependencies", {})


#: extras the tests do not install: gpu replaces onnxruntime by onnxruntime-gpu (the same import
#: package, with CUDA libraries) and CI has no GPU; the CPU fallback is what the tests exercise
NOT_FOR_TESTS = {"gpu"}


def test_test_requirements_install_bncheck_with_every_extra():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = sorted(set(pyproject["project"]["optional-dependencies"]) - NOT_FOR_TESTS)
    text = (ROOT / "requirements" / "test.txt").read_text(encoding="utf-8")
    editable = re.search(r"^-e \.\[(.*)\]$", text, re.M)
    assert editable, "requirements/test.txt must install the project itself (-e .[extras])"
    assert sorted(editable.group(1).split(",")) == extras


def test_wheel_ships_py_typed_and_the_schema(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("bncheck-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "bncheck/py.typed" in names
    assert "bncheck/report/report_schema.json" in names


def _quick_start_command() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    return blocks[0].strip()


@pytest.mark.skipif(os.environ.get("BNCHECK_SKIP_FRESH_VENV") == "1", reason="BNCHECK_SKIP_FRESH_VENV=1")
def test_readme_quick_start_works_in_a_fresh_venv(tmp_path):
    """A fresh venv with the pip it ships (no upgrade, no cache), the README's first command."""
    command = _quick_start_command()
    assert command.startswith("python -m pip install -e . && bncheck drift ")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PIP_NO_CACHE_DIR": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    # the shifted folder fails the gate: exit 1 and a findings table, not an install error
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "BN102" in result.stdout and "BN301" in result.stdout  # variance drift, and the fix it names
