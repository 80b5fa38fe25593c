"""Helpers shared by the process-level benchmarks (``drift_process.py``, ``drift_memory.py``):
deterministic image folders, timed child processes with their own peak RSS, ONNX export that
keeps the BatchNormalization nodes, and the machine's load."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


# ------------------------------------------------------------------------ data


def image_array(index: int, size: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A deterministic, natural-looking ``(size, size, channels)`` uint8 image: a smooth random
    field (a 6x6 grid upsampled bicubically) plus fine noise, so PNG compression and decoding
    cost about what they cost on photographs of that size, not what flat or pure-noise images
    cost. Image ``index`` is the same whatever the folder size."""
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    coarse = rng.integers(0, 256, (6, 6, channels), dtype=np.uint8)
    mode = "RGB" if channels == 3 else "L"
    smooth = Image.fromarray(coarse[:, :, 0] if channels == 1 else coarse, mode).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    pixels = np.asarray(smooth, dtype=np.int16)
    if channels == 1:
        pixels = pixels[:, :, None]
    noise = rng.integers(-12, 13, pixels.shape, dtype=np.int16)
    return np.clip(pixels + noise, 0, 255).astype(np.uint8)


def make_image_folder(
    root: Path, count: int, size: int, *, channels: int = 3, classes: int = 10, seed: int = 0
) -> Path:
    """``count`` PNG files ``root/class_k/img_iiiiii.png`` (``classes`` class folders, images
    dealt round-robin), written once: an existing folder with the same count is reused."""
    from PIL import Image

    root = Path(root)
    marker = root / f".complete-{count}-{size}-{channels}-{classes}-{seed}"
    if marker.exists():
        return root
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = image_array(i, size, channels, seed)
        image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
        image.save(root / f"class_{i % classes}" / f"img_{i:06d}.png")
    marker.touch()
    return root


def image_files(root: Path) -> list[Path]:
    return sorted(Path(root).rglob("*.png"))


def load_images_nchw(files: list[Path], grayscale: bool = False) -> np.ndarray:
    """The files as float32 (N, C, H, W) in [0, 1] (the default bncheck preprocessing)."""
    from PIL import Image

    out = []
    for path in files:
        with Image.open(path) as image:
            x = np.asarray(image.convert("L" if grayscale else "RGB"), dtype=np.float32) / 255.0
        out.append(x[None] if grayscale else x.transpose(2, 0, 1))
    return np.stack(out)


# ------------------------------------------------------------------------ models


def calibrate(model, batches) -> None:
    """Set every BN layer's running statistics to the exact population statistics of
    ``batches`` (cumulative average, momentum None), as a model trained on such data has."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for x in batches:
            model(torch.from_numpy(np.ascontiguousarray(x)))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def export_onnx(model, sample_shape: tuple[int, ...], path: Path, dynamic_axes: dict | None = None) -> Path:
    """Legacy exporter in EVAL mode without constant folding, so that the BatchNormalization
    nodes stay in the graph; dynamic batch axis (axis 0 of input and logits) unless
    ``dynamic_axes`` says otherwise."""
    import torch

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(2, *sample_shape),),
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=dynamic_axes or {"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def count_bn_nodes(path: Path) -> int:
    import onnx

    return sum(node.op_type == "BatchNormalization" for node in onnx.load(str(path)).graph.node)


# ------------------------------------------------------------------------ child processes


@dataclass
class ChildRun:
    """One finished child process: wall time from spawn to exit, and its own peak RSS and CPU
    time (from ``wait4``'s rusage, so neither this process nor other children count)."""

    argv: list[str]
    returncode: int
    wall_s: float
    max_rss_bytes: int
    user_s: float
    sys_s: float
    stdout: str
    stderr: str


#: Spawns the measured command and reports its rusage. A process's ru_maxrss includes the
#: memory it had before exec: a child forked (or vforked) straight from this benchmark, which
#: holds torch and test data, would report the benchmark's RSS. This small launcher (a bare
#: Python, ~10 MB) is the parent of the measured command instead.
LAUNCHER = """
import json, os, subprocess, sys, time
report, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
proc = subprocess.Popen(argv)
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - start
with open(report, "w") as handle:
    json.dump({"returncode": os.waitstatus_to_exitcode(status), "wall_s": wall,
               "maxrss": usage.ru_maxrss, "user_s": usage.ru_utime, "sys_s": usage.ru_stime}, handle)
"""


def run_child(argv: list[str], *, cwd: Path | None = None, env: dict | None = None) -> ChildRun:
    """Run ``argv`` to completion through :data:`LAUNCHER`; stdout/stderr go to temporary
    files (no pipe can fill). The wall time is the launcher's measurement, spawn to exit."""
    with tempfile.TemporaryDirectory(prefix="bncheck-child-") as tmp:
        report = Path(tmp) / "rusage.json"
        with open(Path(tmp) / "out", "w+b") as out, open(Path(tmp) / "err", "w+b") as err:
            subprocess.run(
                [sys.executable, "-c", LAUNCHER, str(report), *argv],
                stdout=out, stderr=err, cwd=cwd, env=env, check=True,
            )
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
        usage = json.loads(report.read_text())
    # ru_maxrss is in KiB on Linux, bytes on macOS
    rss = usage["maxrss"] * (1 if sys.platform == "darwin" else 1024)
    return ChildRun(
        argv, usage["returncode"], usage["wall_s"], rss, usage["user_s"], usage["sys_s"], stdout, stderr
    )


def child_env(pycache: Path | None = None) -> dict:
    """The environment for children: no colour; with ``pycache``, Python may write and reuse
    compiled bytecode there (``PYTHONPYCACHEPREFIX``) even where the environment sets
    ``PYTHONDONTWRITEBYTECODE``, as installed packages always have their ``.pyc`` files
    (without it every bncheck process compiles its ~60 modules again, about 60 ms)."""
    env = dict(os.environ)
    env["NO_COLOR"] = "1"
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


# ------------------------------------------------------------------------ reporting


def median(values) -> float:
    return float(statistics.median(values))


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict:
    import onnxruntime

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "load_average_at_start": load_average(),
    }


def import_times(stderr: str) -> dict[str, int]:
    """``python -X importtime`` output -> {module: cumulative microseconds} (first occurrence)."""
    out: dict[str, int] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        out.setdefault(parts[2].strip(), int(parts[1]))
    return out


def small_cnn(num_classes: int = 10):
    """A small CNN with BN for (3, 32, 32) inputs: three conv + BatchNorm2d + ReLU stages (32,
    64, 128 channels), global average pooling, Linear + BatchNorm1d + ReLU, Linear. Also the
    ``--arch bench/common.py:small_cnn`` factory for its state dict."""
    from torch import nn

    def stage(cin: int, cout: int, stride: int) -> list:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *stage(3, 32, 1),
        *stage(32, 64, 2),
        *stage(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 64, bias=False),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
