"""--device on drift and recalibrate, both backends: cpu is the default, a CUDA device the
runtime cannot use stops the run (exit 2, one sentence, nothing written), auto falls back to the
CPU with one sentence on stderr and the same figures; on a machine with CUDA, the figures on
the GPU match the CPU's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bncheck.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
SHIFTED = SAMPLES / "data" / "digits" / "shifted"
ARCH = f"{SAMPLES / 'architectures.py'}:digits_cnn"
MODELS = {"onnx": (SAMPLES / "digits_cnn.onnx", [], "o.onnx"), "torch": (SAMPLES / "digits_cnn.pt", ["--arch", ARCH], "o.pt")}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def run_process(*args):
    """The CLI in a process of its own: stderr as a user sees it (pytest captures logging)."""
    return subprocess.run([sys.executable, "-m", "bncheck", *map(str, args)], capture_output=True, text=True, timeout=300)


def _cuda_usable(family: str) -> bool:
    if family == "torch":
        import torch

        return torch.cuda.is_available()
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _figures(body):
    return {layer["name"]: layer["drift"]["mean_shift"]["mean"] for layer in body["layers"] if layer.get("drift")}


@pytest.mark.parametrize("family", ["onnx", "torch"])
def test_unusable_cuda_exits_2_and_auto_falls_back(tmp_path, family):
    if _cuda_usable(family):
        pytest.skip("CUDA is usable here: the fallback cannot be seen")
    model, extra, name = MODELS[family]
    for command in (["drift", model, SHIFTED, "--mismatch-samples", "0"], ["recalibrate", model, SHIFTED, "--out", tmp_path / name]):
        demanded = run(*command, "--device", "cuda:0", *extra)
        assert demanded.exit_code == 2 and "--device cuda:0 cannot be used" in demanded.output, demanded.output
        assert "Traceback" not in demanded.output and not (tmp_path / name).exists()
    cpu = run("drift", model, SHIFTED, "--mismatch-samples", "0", "-f", "json", *extra)
    auto = run_process("drift", model, SHIFTED, "--mismatch-samples", "0", "-f", "json", "--device", "auto", *extra)
    assert cpu.exit_code == auto.returncode == 1
    lines = [line for line in auto.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--device auto runs on the CPU" in lines[0], auto.stderr
    assert _figures(json.loads(auto.stdout)) == _figures(json.loads(cpu.stdout))
    written = run_process("recalibrate", model, SHIFTED, "--out", tmp_path / name, "--device", "auto", "-q", *extra)
    assert written.returncode == 0 and (tmp_path / name).exists() and written.stderr.count("runs on the CPU") == 1, written.stderr


@pytest.mark.parametrize("family", ["onnx", "torch"])
def test_cuda_figures_match_the_cpu(tmp_path, family):
    if not _cuda_usable(family):
        pytest.skip(f"no CUDA for {family} here")
    model, extra, name = MODELS[family]
    cpu = json.loads(run("drift", model, SHIFTED, "--mismatch-samples", "0", "-f", "json", *extra).stdout)
    gpu = json.loads(run("drift", model, SHIFTED, "--mismatch-samples", "0", "-f", "json", "--device", "cuda", *extra).stdout)
    for layer, value in _figures(cpu).items():
        assert _figures(gpu)[layer] == pytest.approx(value, rel=1e-4, abs=1e-6)
    out = tmp_path / name
    assert run("recalibrate", model, SHIFTED, "--out", out, "--device", "cuda", "-q", *extra).exit_code == 0 and out.exists()
