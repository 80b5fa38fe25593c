"""The ONNX path of ``bncheck drift`` runs without importing torch (torch is an optional extra),
checked on real processes with ``python -X importtime``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
REFERENCE = SAMPLES / "data" / "digits" / "reference"

#: packages that no path of the CLI needs at start-up, nor the ONNX drift path over images
HEAVY = ("torch", "pandas", "pyarrow", "matplotlib", "safetensors")


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -X importtime -m bncheck ARGS``; the process and every module it imported
    (from the ``import time: self | cumulative | name`` lines on stderr)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bncheck", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            fields = line.split("|")
            if len(fields) == 3 and fields[1].strip().isdigit():
                modules.add(fields[2].strip())
    return proc, modules


def top_level(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_onnx_drift_over_images_imports_no_torch():
    proc, modules = imported_modules(
        "drift", str(SAMPLES / "digits_cnn.onnx"), str(REFERENCE), "--format", "json"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["data"]["samples"] == 540 and report["drift"]["small_batch"] is not None
    # the parse saw the imports that this path really needs
    assert {"bncheck.commands.drift", "onnxruntime", "onnx", "PIL.Image"} <= modules
    assert not top_level(modules) & set(HEAVY), sorted(
        m for m in modules if m.split(".")[0] in HEAVY
    )


def test_torch_drift_does_import_torch():
    """The same parse finds torch where it is needed: the check above can fail."""
    proc, modules = imported_modules(
        "drift",
        str(SAMPLES / "digits_cnn.pt"),
        str(REFERENCE),
        "--arch",
        f"{SAMPLES / 'architectures.py'}:digits_cnn",
        "--format",
        "json",
        "--mismatch-samples",
        "0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch" in modules and "torch.nn" in modules


def test_version_imports_no_model_runtime():
    proc, modules = imported_modules("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("bncheck ")
    assert "bncheck.cli" in modules and "bncheck.cli.app" not in modules  # the --version fast path
    assert not top_level(modules) & {*HEAVY, "onnx", "onnxruntime", "PIL"}
