"""Shared by the report tests (imported by name: tests/reports is on sys.path under pytest):
paths of the bundled samples, the in-process CLI, and the runs the session fixture makes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
DIGITS = SAMPLES / "data" / "digits"
CANCER = SAMPLES / "data" / "cancer"
ARCH = f"{SAMPLES / 'architectures.py'}:digits_cnn"


@dataclass
class Run:
    """One CLI run: its exit code, the JSON report on disk and parsed."""

    name: str
    exit_code: int
    path: Path
    data: dict


def invoke(*args):
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


#: name -> bncheck arguments (a JSON report is written to <name>.json)
RUNS = {
    "audit_onnx": ["audit", SAMPLES / "digits_cnn.onnx"],
    "audit_broken": ["audit", SAMPLES / "broken" / "digits_cnn_uncalibrated.pt", "--arch", ARCH],
    "drift_shifted": ["drift", SAMPLES / "digits_cnn.onnx", DIGITS / "shifted", "--channels"],
    "drift_reference": ["drift", SAMPLES / "digits_cnn.onnx", DIGITS / "reference", "--channels"],
    "drift_csv": ["drift", SAMPLES / "cancer_mlp.onnx", CANCER / "shifted.csv", "--mismatch-samples", "0"],
    "fold_onnx": ["fold", SAMPLES / "digits_cnn.onnx", "--out", "{tmp}/folded.onnx", "--no-timing"],
    "recalibrate_onnx": ["recalibrate", SAMPLES / "digits_cnn.onnx", DIGITS / "shifted", "--out", "{tmp}/recalibrated.onnx"],
}

def make_runs(folder: Path, have_torch: bool) -> dict[str, Run]:
    runs = {}
    for name, args in RUNS.items():
        if not have_torch and any(str(a).endswith(".pt") for a in args):
            continue
        args = [str(a).replace("{tmp}", str(folder)) for a in args]
        out = folder / f"{name}.json"
        result = invoke(*args, "--format", "json", "-o", out, "--quiet")
        assert result.exit_code in (0, 1), (name, result.output)
        runs[name] = Run(name, result.exit_code, out, json.loads(out.read_text(encoding="utf-8")))
    return runs
