"""Issue 11 item 5: no raw Python warning or logged traceback on stderr. Each input below made
numpy, PIL or torch write to stderr; now a run says one sentence (or nothing) and the
libraries' own output appears only under --verbose/--debug."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.onnx_graphs import with_nan_first_bn_stats

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
REFERENCE = SAMPLES / "data" / "digits" / "reference.npz"


def bncheck(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-m", "bncheck", *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


def assert_clean(stderr: str) -> None:
    assert "Warning" not in stderr and "Traceback" not in stderr and "warnings.warn" not in stderr, stderr


def all_nan_stats(path: Path) -> Path:
    """digits_cnn.onnx with the first BN's running mean and variance all NaN."""
    return with_nan_first_bn_stats(SAMPLES / "digits_cnn.onnx", path)


def overflowing_data(path: Path) -> Path:
    np.save(path, np.full((8, 1, 8, 8), 3e38, np.float32))
    return path


CASES = {
    # numpy: "All-NaN slice encountered" drawing the table's running-stats column
    "all-nan-slice": (lambda tmp: ["audit", str(all_nan_stats(tmp / "m.onnx"))], (1,), "RuntimeWarning: All-NaN slice"),
    # numpy: "invalid value encountered in sqrt" on a negative running variance
    "invalid-sqrt": (
        lambda tmp: ["drift", str(SAMPLES / "broken" / "digits_cnn_negative_var.onnx"), str(REFERENCE)],
        (1, 2),
        "invalid value encountered in sqrt",
    ),
    # numpy: "invalid value encountered in subtract" when data overflow inside the model
    "overflow": (
        lambda tmp: ["drift", str(SAMPLES / "digits_cnn.onnx"), str(overflowing_data(tmp / "huge.npy"))],
        (2,),
        "RuntimeWarning: invalid value",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_warnings_stay_off_stderr_unless_verbose(tmp_path, case):
    build, codes, warning = CASES[case]
    args = build(tmp_path)
    result = bncheck(*args, cwd=tmp_path)
    assert result.returncode in codes, result.stderr
    assert_clean(result.stderr)
    assert result.stderr.count("\n") <= 1, result.stderr  # at most the one error sentence
    shown = bncheck("--verbose", *args, cwd=tmp_path)  # the input really provokes the warning
    assert warning in shown.stderr, shown.stderr


def test_a_decompression_bomb_is_a_sentence_not_a_pil_warning(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("L", (10_000, 10_000)).save(folder / "bomb.png")  # 100 Mpx in 97 kB: PIL only warns
    result = bncheck("drift", str(SAMPLES / "digits_cnn.onnx"), str(folder), cwd=tmp_path)
    assert result.returncode == 2
    assert_clean(result.stderr)
    assert result.stderr.startswith("error: ") and "decompression bomb" in result.stderr and result.stderr.count("\n") == 1


def unknown_operator_pt2(dst: Path) -> Path:
    """digits_cnn.pt2 whose first node calls an operator torch does not have: torch.export.load
    logs the deserialisation traceback (77 lines) and raises "check the warnings above"."""
    with zipfile.ZipFile(SAMPLES / "digits_cnn.pt2") as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    name = next(n for n in members if n.endswith("/models/model.json"))
    program = json.loads(members[name])
    program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.ops.aten.no_such_op.default"
    members[name] = json.dumps(program).encode()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return dst


@pytest.mark.parametrize("verbose", [False, True], ids=["plain", "verbose"])
def test_a_pt2_torch_cannot_deserialise_is_one_sentence_with_the_real_reason(tmp_path, verbose):
    unknown_operator_pt2(tmp_path / "bad.pt2")
    result = bncheck(*(["--verbose"] if verbose else []), "audit", "bad.pt2", cwd=tmp_path)
    assert result.returncode == 2
    assert_clean(result.stderr)
    assert result.stderr.startswith("error: bad.pt2 cannot be loaded") and result.stderr.count("\n") == 1, result.stderr
    assert "no_such_op" in result.stderr and "warnings above" not in result.stderr


def test_quiet_keeps_the_data_notes_off_stderr(tmp_path):
    """``-q`` promises no notes on stderr: the loader's "N sample(s) contain NaN or Inf and were
    excluded" went there all the same. Without ``-q`` it is said; with it, stderr stays empty
    and the report still counts the excluded sample."""
    x = np.load(REFERENCE)["x"][:64].astype(np.float32)
    x[3, 0, 0, 0] = np.nan
    np.save(tmp_path / "data.npy", x)
    args = ("drift", str(SAMPLES / "digits_cnn.onnx"), str(tmp_path / "data.npy"), "-f", "json", "--mismatch-samples", "0")
    loud = bncheck(*args, cwd=tmp_path)
    assert loud.returncode in (0, 1), loud.stderr
    assert "contain NaN or Inf and were excluded" in loud.stderr
    quiet = bncheck(*args, "-q", cwd=tmp_path)
    assert quiet.returncode == loud.returncode and quiet.stderr == "", quiet.stderr
    assert json.loads(quiet.stdout)["data"]["nonfinite_samples"] == 1


def test_quiet_restores_the_data_logger_after_the_command(tmp_path):
    """One process may run several commands (the API, the tests): ``-q`` silences the data
    loader's notes for its own command only."""
    import logging

    from typer.testing import CliRunner

    from bncheck.cli.app import app

    logger = logging.getLogger("bncheck.data")
    before = logger.level
    x = np.load(REFERENCE)["x"][:40].astype(np.float32)
    np.save(tmp_path / "data.npy", x)
    result = CliRunner().invoke(app, ["drift", str(SAMPLES / "digits_cnn.onnx"), str(tmp_path / "data.npy"), "-q", "--mismatch-samples", "0"])
    assert result.exit_code in (0, 1), result.output
    assert logger.level == before
