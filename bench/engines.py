"""Throughput of the data pass of ``bncheck drift`` on the local engine and on Ray with one and
two actors, on the same data; and the wall time of ``bncheck merge`` over 1,000 shard files.

Workload: a ResNet-18 (20 BatchNorm2d layers, ``bench/resnet18.py``) exported to ONNX with its
BN statistics calibrated on the data, and a folder of deterministic 64x64 RGB PNG images
(``bench/common.py``), read with the default preprocessing. Each engine runs the pass that
``drift`` runs (per-layer moments, predictions, a 256-sample subsample) through the engine API;
the figure is samples per second of the pass alone, the median of ``--repeats`` passes; every
engine's session stays open and the passes run in interleaved rounds, so that load from other
processes hits each engine alike. Starting Ray and starting the actors (each loads the model)
are timed separately: they are paid once per run, not per sample. The statistics of every engine are checked against the
local engine's (rtol 1e-9).

Merge: 1,000 part files like ``drift --shard K/1000 --save-stats`` writes (the same writer,
metadata and ResNet-18 layer layout; per-part moments measured on one image each), merged by
``bncheck merge`` in a child process (Python start-up included) and by ``merge_files`` in this
one; the merged statistics are checked against a one-process run over the same images.

Results go to ``bench/results/engines.json`` and are printed.

    python bench/engines.py [--images 768] [--repeats 5] [--ray-workers 1,2] [--parts 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    RESULTS,
    calibrate,
    export_onnx,
    image_files,
    load_average,
    load_images_nchw,
    machine,
    make_image_folder,
    median,
    run_child,
)

SIZE = 64
BATCH = 32


def build_model(folder: Path, images: Path) -> Path:
    import torch
    from resnet18 import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    x = load_images_nchw(image_files(images)[:256])
    calibrate(model, [x[i : i + BATCH] for i in range(0, len(x), BATCH)])
    return export_onnx(model, (3, SIZE, SIZE), folder / "resnet18.onnx")


def open_session(engine, source, data: Path):
    from bncheck.data import DataOptions
    from bncheck.engines import DataSpec, ModelSpec

    layers = [layer.name for layer in source.bn_layers()]
    options = DataOptions(workers=1) if engine.name == "ray" else DataOptions()
    begin = time.perf_counter()
    session = engine.session(source, DataSpec(str(data), batch_size=BATCH), options, layers=layers, model=ModelSpec(source.path))
    return session, layers, time.perf_counter() - begin


def bench_engines(work: Path, images: int, repeats: int, ray_workers: list[int]) -> dict:
    """Every engine's session stays open; the passes run in interleaved rounds (local, ray 1,
    ray 2, local, ...) so that load from other processes hits each alike."""
    import ray

    from bncheck.backends import load_model
    from bncheck.engines import PassRequest, make_engine

    data = make_image_folder(work / "images", images, SIZE)
    model = build_model(work, data)
    source = load_model(model)
    out: dict = {"images": images, "image_size": SIZE, "batch_size": BATCH, "model": "ResNet-18 ONNX, 20 BN layers",
                 "rounds": repeats, "load_average_at_start": load_average()}  # fmt: skip
    begin = time.perf_counter()
    # logical CPUs for every actor of every session at once (idle actors cost no CPU time)
    ray.init(num_cpus=max(os.cpu_count() or 1, sum(ray_workers)), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    out["ray_init_s"] = round(time.perf_counter() - begin, 3)
    sessions, runs = {}, {}
    try:
        sessions["local"] = open_session(make_engine("local"), source, data)
        for workers in ray_workers:
            sessions[f"ray_{workers}"] = open_session(make_engine("ray", workers=workers), source, data)
        results = {}
        for name, (_, _, started) in sessions.items():
            runs[name] = {"session_start_s": round(started, 3), "pass_s": []}
        for _ in range(repeats):
            for name, (session, layers, _) in sessions.items():
                begin = time.perf_counter()
                results[name] = session.measure(PassRequest(layers, BATCH, keep=256, keep_predictions=True))
                runs[name]["pass_s"].append(round(time.perf_counter() - begin, 3))
    finally:
        for session, _, _ in sessions.values():
            session.close()
        ray.shutdown()
    reference = results["local"].moments
    for name, run in runs.items():
        result = results[name]
        run["samples"] = result.samples
        run["samples_per_s"] = round(result.samples / median(run["pass_s"]), 1)
        worst = max(float(np.max(np.abs(result.moments[k].m2 / reference[k].m2 - 1))) for k in reference)
        run["max_rel_diff_m2_vs_local"] = worst
        assert worst < 1e-9, (name, worst)
    local_rate = runs["local"]["samples_per_s"]
    for workers in ray_workers:
        runs[f"ray_{workers}"]["throughput_vs_local"] = round(runs[f"ray_{workers}"]["samples_per_s"] / local_rate, 3)
        runs[f"ray_{workers}"]["throughput_vs_ray_1"] = round(runs[f"ray_{workers}"]["samples_per_s"] / runs[f"ray_{ray_workers[0]}"]["samples_per_s"], 3)
    out["runs"] = runs
    return out


def bench_merge(work: Path, parts: int) -> dict:
    from bncheck.backends import load_model
    from bncheck.data import DataOptions
    from bncheck.data.planning import make_plan
    from bncheck.numerics.moments import merge_all
    from bncheck.report.stats_file import (
        StatsFile,
        merge_files,
        part_metadata,
        read_stats,
        write_stats,
    )

    data = make_image_folder(work / "merge-images", parts, SIZE)
    source = load_model(work / "resnet18.onnx")
    layers = source.bn_layers()
    names = [layer.name for layer in layers]
    plan, dataset = make_plan(data, DataOptions(), (3, SIZE, SIZE))
    x, _ = dataset.collect(BATCH)
    folder = work / "parts"
    folder.mkdir(exist_ok=True)
    per_part = []
    with source.runner(layers=names) as runner:
        for i in range(parts):  # one image per shard: per-part moments from the runner itself
            per_part.append(runner.moments(x[i : i + 1])[1])
        whole = {n: merge_all([runner.moments(x[s : s + BATCH])[1][n] for s in range(0, parts, BATCH)]) for n in names}
    describe = dataset.describe()
    paths = []
    for i, moments in enumerate(per_part):
        provenance = {"files": 1, "listing_files": parts, "listing_sha256": plan.digest, "ranges": [[i, i + 1]], "shards": [i], "of": parts}
        meta = part_metadata(source=source, layers=layers, data=str(data), samples=1, batch_size=BATCH, describe=describe, provenance=provenance)
        running = {layer.name: (layer.running_mean, layer.running_var) for layer in layers}
        path = folder / f"part{i:04d}.npz"
        write_stats(path, StatsFile(path, meta, moments, running), force=True)
        paths.append(path)
    size = sum(p.stat().st_size for p in paths)
    out_cli = work / "merged-cli.npz"
    child = run_child([sys.executable, "-m", "bncheck", "merge", *map(str, reversed(paths)), "-o", str(out_cli), "--force"])
    assert child.returncode == 0, child.stderr
    begin = time.perf_counter()
    merged = merge_files(paths, work / "merged-api.npz", force=True)
    in_process = time.perf_counter() - begin
    cli = read_stats(out_cli)
    assert all(np.array_equal(cli.moments[n].m2, merged.moments[n].m2) for n in names)  # order-free bits
    worst = max(float(np.max(np.abs(merged.moments[n].m2 / whole[n].m2 - 1))) for n in names)
    return {
        "load_average_at_start": load_average(),
        "parts": parts,
        "layers": len(names),
        "channels": int(sum(layer.num_features for layer in layers)),
        "part_bytes_total": size,
        "cli_wall_s": round(child.wall_s, 3),
        "cli_max_rss_mb": round(child.max_rss_bytes / 2**20, 1),
        "in_process_s": round(in_process, 3),
        "max_rel_diff_m2_vs_one_run": worst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of passes")
    parser.add_argument("--ray-workers", default="1,2", help="actor counts to time, e.g. 1,2,4,8 on a larger machine")
    parser.add_argument("--parts", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=None, help="folder for data and models (default: a temporary one)")
    parser.add_argument("--only", choices=("engines", "merge"), help="run one part; the other stays as last written")
    args = parser.parse_args()
    target = RESULTS / "engines.json"
    results = json.loads(target.read_text()) if args.only and target.exists() else {}
    results["machine"] = machine()
    with tempfile.TemporaryDirectory(prefix="bncheck-bench-engines-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.only != "merge":
            results["engines"] = bench_engines(work, args.images, args.repeats, [int(w) for w in args.ray_workers.split(",")])
        if args.only != "engines":
            if not (work / "resnet18.onnx").exists():
                build_model(work, make_image_folder(work / "images", args.images, SIZE))
            results["merge"] = bench_merge(work, args.parts)
    RESULTS.mkdir(exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
