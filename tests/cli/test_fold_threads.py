"""``bncheck fold`` keeps its threads from spinning (bncheck.cli.app.QUIET_THREADS): the
defaults are in the environment before numpy (OpenBLAS) and torch (OpenMP) load and read them,
and a user's own setting wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bncheck.cli.app import COMMANDS, QUIET_THREADS

ROOT = Path(__file__).resolve().parents[2]

#: runs ``bncheck ARGS`` in this process; writes what the environment said when numpy was first
#: imported, and at exit, to argv[1]
PROBE = """
import atexit, importlib.abc, json, os, runpy, sys
out, args = sys.argv[1], sys.argv[2:]
names = ("OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY")
seen = {}
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "numpy" and "at_numpy" not in seen:
            seen["at_numpy"] = {k: os.environ.get(k) for k in names}
        return None
sys.meta_path.insert(0, Watch())
atexit.register(lambda: open(out, "w").write(json.dumps({**seen, "at_exit": {k: os.environ.get(k) for k in names}})))
sys.argv = ["bncheck", *args]
runpy.run_module("bncheck", run_name="__main__")
"""


def _environment_seen(tmp_path: Path, extra: dict[str, str], *args: str) -> dict:
    out = tmp_path / "env.json"
    env = {k: v for k, v in os.environ.items() if k not in QUIET_THREADS} | {"PYTHONPATH": str(ROOT), "NO_COLOR": "1", **extra}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_fold_sets_the_thread_defaults_before_numpy_loads(tmp_path):
    seen = _environment_seen(tmp_path, {}, "fold", "sample_models/digits_cnn.onnx", "--out", str(tmp_path / "f.onnx"), "-f", "json")
    assert seen["at_numpy"] == {"OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"} == seen["at_exit"]
    assert COMMANDS["fold"].env == QUIET_THREADS


def test_the_user_s_own_thread_settings_win(tmp_path):
    mine = {"OPENBLAS_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}
    seen = _environment_seen(tmp_path, mine, "fold", "sample_models/digits_cnn.onnx", "--out", str(tmp_path / "f.onnx"), "-f", "json")
    assert seen["at_numpy"] == mine == seen["at_exit"]


def test_other_commands_leave_the_threads_alone(tmp_path):
    seen = _environment_seen(tmp_path, {}, "audit", "sample_models/digits_cnn.onnx", "-f", "json")
    assert seen["at_numpy"] == {"OPENBLAS_NUM_THREADS": None, "OMP_WAIT_POLICY": None}
