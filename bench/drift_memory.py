"""Peak memory of a ``bncheck drift`` process as the data grows: 1,000 vs 10,000 samples.

Setup (deterministic, in a temporary folder unless ``--workdir`` is given): ``common.small_cnn``
(three conv + BatchNorm2d stages, a Linear + BatchNorm1d, (3, 32, 32) input) with running
statistics of the first 512 images, saved as an ONNX model (legacy exporter, BN nodes kept) and
as a state dict (``--arch bench/common.py:small_cnn``); the same samples as

* ``images``: folders of 1,000 and 10,000 PNG files, 32x32 RGB, in 10 class folders (the
  1,000 are the first 1,000 of the 10,000);
* ``npy``: one ``.npy`` batch of each size, float32 (N, 3, 32, 32) (the same pixels / 255).

Each ``bncheck drift --format json`` process (default options: 256-sample subsample for the
train-mode analyses) runs to completion; its own peak RSS comes from ``os.wait4``'s rusage
(``ru_maxrss``, so the benchmark process and other children do not count). Every round runs
each (variant, size) once, the two sizes back to back in alternating order; figures are
medians over ``--rounds`` (default 3). Requirement: peak RSS at 10,000 samples < 1.10 x the
peak at 1,000, for every variant.

Also, in process: the peak Python heap of ``bncheck.engines.measure.measure`` over 100 vs 1,000 batches
with ResNet-18-sized per-layer moments (:func:`measure_state`), the per-batch state that a
small CNN's RSS cannot show.

Prints a table and writes ``bench/results/drift_memory.json`` (git-ignored).

    python bench/drift_memory.py [--small 1000] [--large 10000] [--rounds 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from common import (  # noqa: E402
    RESULTS,
    ROOT,
    calibrate,
    child_env,
    count_bn_nodes,
    export_onnx,
    image_files,
    load_average,
    load_images_nchw,
    machine,
    make_image_folder,
    median,
    run_child,
)

REQUIRED_RATIO = 1.10
SIZE = 32


def prepare(workdir: Path, small: int, large: int) -> dict:
    import torch
    from common import small_cnn

    data = {}
    for n in (small, large):
        folder = make_image_folder(workdir / f"images-{n}-{SIZE}", n, SIZE)
        npy = workdir / f"arrays-{n}-{SIZE}.npy"
        if not npy.exists():
            np.save(npy, load_images_nchw(image_files(folder)))
        data[n] = {"images": folder, "npy": npy}
    onnx_path, state_path = workdir / "small_cnn.onnx", workdir / "small_cnn.pt"
    if not onnx_path.exists() or not state_path.exists():
        torch.manual_seed(0)
        model = small_cnn()
        x = load_images_nchw(image_files(data[large]["images"])[:512])
        calibrate(model, [x[i : i + 64] for i in range(0, len(x), 64)])
        torch.save(model.state_dict(), state_path)
        export_onnx(model, (3, SIZE, SIZE), onnx_path)
    return {"data": data, "onnx": onnx_path, "state_dict": state_path}


def commands(setup: dict, small: int, large: int, kinds: list[str]) -> dict[str, dict[int, list[str]]]:
    py = sys.executable
    arch = ["--arch", f"{HERE / 'common.py'}:small_cnn"]
    out: dict[str, dict[int, list[str]]] = {}
    for backend, model, extra in (("onnx", setup["onnx"], []), ("torch", setup["state_dict"], arch)):
        for kind in kinds:
            out[f"{backend} {kind}"] = {
                n: [py, "-m", "bncheck", "drift", str(model), str(setup["data"][n][kind]),
                    "--format", "json", *extra]
                for n in (small, large)
            }
    return out


def measure(cmds: dict[str, dict[int, list[str]]], rounds: int, small: int, large: int, env: dict) -> dict:
    rss: dict[str, dict[int, list[int]]] = {name: {small: [], large: []} for name in cmds}
    wall: dict[str, dict[int, list[float]]] = {name: {small: [], large: []} for name in cmds}
    facts: dict[str, dict] = {}
    loads = []
    for r in range(rounds):
        loads.append(load_average()[0])
        for name, by_size in cmds.items():
            for n in (small, large) if r % 2 == 0 else (large, small):
                run = run_child(by_size[n], cwd=ROOT, env=env)
                if run.returncode not in (0, 1):
                    raise SystemExit(f"{name} on {n} samples failed (rc {run.returncode}): {run.stderr[-2000:]}")
                report = json.loads(run.stdout)
                if report["data"]["samples"] != n:
                    raise SystemExit(f"{name} read {report['data']['samples']} samples, not {n}")
                facts[name] = {
                    "train_mode_analyses_ran": report["drift"].get("small_batch") is not None,
                    "rules": sorted({f["rule"] for f in report["findings"]}),
                }
                rss[name][n].append(run.max_rss_bytes)
                wall[name][n].append(run.wall_s)
                print(f"  round {r + 1}/{rounds} {name:14s} {n:6d} samples: peak RSS "
                      f"{run.max_rss_bytes / 2**20:7.1f} MB, {run.wall_s:6.2f} s", flush=True)
    out = {}
    for name in cmds:
        a, b = median(rss[name][small]), median(rss[name][large])
        out[name] = {
            "command": " ".join(cmds[name][large]),
            f"peak_rss_mb_{small}": round(a / 2**20, 1),
            f"peak_rss_mb_{large}": round(b / 2**20, 1),
            "ratio": round(b / a, 4),
            "extra_mb": round((b - a) / 2**20, 1),
            "per_round_mb": {str(n): [round(v / 2**20, 1) for v in rss[name][n]] for n in (small, large)},
            f"wall_s_median_{small}": round(median(wall[name][small]), 2),
            f"wall_s_median_{large}": round(median(wall[name][large]), 2),
            "passed": b / a < REQUIRED_RATIO,
            **facts[name],
        }
    out["_load_average_1min_per_round"] = loads
    return out


#: channels of the 20 BN layers of a ResNet-18 (bench/resnet18.py)
RESNET18_BN_CHANNELS = [64] * 5 + [128] * 5 + [256] * 5 + [512] * 5


def measure_state(batch_counts: tuple[int, ...] = (100, 1000)) -> dict:
    """Peak Python heap (tracemalloc) of ``bncheck.engines.measure.measure`` itself over 100 vs 1,000
    batches of 32 from a stand-in runner that returns the outputs (1,000 classes, labelled)
    and per-layer moments of a ResNet-18's 20 BN layers: what a pass keeps per batch, without
    the model. The small CNN above has too few channels for this to show in its RSS; with a
    ResNet-18 it would be ~0.1 MB per batch if per-batch state were kept."""
    import importlib
    import tracemalloc
    from types import SimpleNamespace

    from bncheck.numerics.moments import Moments

    drift = importlib.import_module("bncheck.engines.measure")
    rng = np.random.default_rng(0)
    outputs = np.zeros((32, 1000), np.float32)
    labels = np.zeros(32, np.int64)

    class Runner:
        def moments(self, x):
            return outputs, {
                f"bn{i}": Moments(32 * 49, rng.random(c), rng.random(c))
                for i, c in enumerate(RESNET18_BN_CHANNELS)
            }

    def batches(n: int):
        for _ in range(n):
            yield SimpleNamespace(x=np.zeros((32, 1), np.float32), y=labels)

    out = {}
    for n in batch_counts:
        tracemalloc.start()
        result = drift.measure(Runner(), batches(n), keep=256, keep_predictions=True)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert result.samples == 32 * n and result.labelled == 32 * n
        out[f"peak_heap_mb_{n}_batches"] = round(peak / 2**20, 2)
    a, b = (out[f"peak_heap_mb_{n}_batches"] for n in batch_counts)
    out["ratio"] = round(b / a, 3)
    out["passed"] = b / a < REQUIRED_RATIO
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default="images,npy", help="data kinds (default images,npy)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and models here")
    parser.add_argument("--out", type=Path, default=RESULTS / "drift_memory.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bncheck-bench-memory-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        setup = prepare(workdir, args.small, args.large)
        results = {
            "benchmark": "peak RSS of a bncheck drift process, small vs large data",
            "required_ratio": REQUIRED_RATIO,
            "rounds": args.rounds,
            "model": f"bench/common.py:small_cnn ({count_bn_nodes(setup['onnx'])} BN layers), input (3, {SIZE}, {SIZE})",
            "machine": machine(),
        }
        print(f"{results['model']}; {args.small} vs {args.large} samples; {args.rounds} rounds; "
              f"load average {results['machine']['load_average_at_start']}")
        cmds = commands(setup, args.small, args.large, args.kinds.split(","))
        results["runs"] = measure(cmds, args.rounds, args.small, args.large, child_env(workdir / "pycache"))
    results["measure_state"] = measure_state()
    runs = {k: v for k, v in results["runs"].items() if not k.startswith("_")}
    results["passed"] = all(row["passed"] for row in runs.values()) and results["measure_state"]["passed"]
    results["machine"]["load_average_at_end"] = load_average()
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    s, b = args.small, args.large
    print(f"\n{'variant':14s} {f'RSS MB @{s}':>12s} {f'RSS MB @{b}':>13s} {'ratio':>7s} "
          f"{'extra MB':>9s} {f'wall s @{s}':>11s} {f'wall s @{b}':>12s}  < {REQUIRED_RATIO}")
    for name, row in runs.items():
        print(f"{name:14s} {row[f'peak_rss_mb_{s}']:12.1f} {row[f'peak_rss_mb_{b}']:13.1f} "
              f"{row['ratio']:7.3f} {row['extra_mb']:9.1f} {row[f'wall_s_median_{s}']:11.2f} "
              f"{row[f'wall_s_median_{b}']:12.2f}  {'yes' if row['passed'] else 'NO'}")
    m = results["measure_state"]
    print(f"measure() heap with ResNet-18-sized layers: {m['peak_heap_mb_100_batches']} MB over 100 "
          f"batches, {m['peak_heap_mb_1000_batches']} MB over 1000 (ratio {m['ratio']})")
    print(f"load average per round {results['runs']['_load_average_1min_per_round']}, at end "
          f"{results['machine']['load_average_at_end']}; {results['wall_seconds']} s; wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
