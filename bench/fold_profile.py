"""Where ``bncheck fold``'s time goes: one untimed run of the whole process under cProfile,
reduced to its stages (the cumulative time of the functions that make them).

Profiling slows Python-heavy stages more than native ones (onnxruntime, protobuf, numpy), so
the stage times are for comparing stages with each other, not with the unprofiled wall time.
"""

from __future__ import annotations

import pstats
import subprocess
from pathlib import Path

#: stage -> the (file suffix, function name) pairs whose cumulative time it is (either backend)
STAGES = {
    "fold() in all": [("bncheck/commands/fold.py", "fold")],
    "load MODEL": [("bncheck/backends/load.py", "as_source")],
    "verification inputs (sizes searched)": [("bncheck/commands/fold_inputs.py", "plan_inputs")],
    "rewrite": [("bncheck/backends/onnx/backend.py", "fold"), ("bncheck/backends/torch/backend.py", "fold")],
    "  of which onnx.checker + serialising": [("bncheck/backends/onnx/fold.py", "check_model")],
    "site proofs": [("bncheck/backends/onnx/backend.py", "prove_sites"), ("bncheck/backends/torch/backend.py", "prove_sites")],
    "  of which the float64 reference (ONNX)": [("bncheck/backends/onnx/fold_proof.py", "_references")],
    "whole-model verification": [("bncheck/commands/fold.py", "_verify")],
    "timing (off for ONNX by default)": [("bncheck/commands/fold.py", "_timing")],
    "write OUT": [("bncheck/commands/fold.py", "_write")],
    "onnxruntime sessions opened (all stages)": [("bncheck/backends/onnx/session.py", "open_session")],
}


def profile(argv: list[str], env: dict, cwd: Path, out: Path) -> dict[str, float]:
    """Run ``argv`` (``[python, -m, bncheck, ...]``) under cProfile; stage -> seconds, with
    ``process`` (the profiled whole) and ``outside fold()`` (interpreter start, imports, CLI,
    report)."""
    prof = out.with_suffix(".prof")
    out.unlink(missing_ok=True)
    subprocess.run([argv[0], "-m", "cProfile", "-o", str(prof), *argv[1:]], env=env, cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stats = pstats.Stats(str(prof)).stats
    found: dict[str, float] = {}
    for (file, _, func), (_, _, _, cumulative, _) in stats.items():
        for stage, places in STAGES.items():
            if any(func == name and file.endswith(suffix) for suffix, name in places):
                found[stage] = found.get(stage, 0.0) + cumulative
    total = max(cumulative for (_, _, _, cumulative, _) in stats.values())
    result = {"process (profiled)": total, "outside fold() (start, imports, CLI, report)": total - found.get("fold() in all", 0.0)}
    result.update({stage: round(found.get(stage, 0.0), 3) for stage in STAGES})
    return {k: round(v, 3) for k, v in result.items()}
