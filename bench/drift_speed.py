"""Whole-process cost of ``bncheck drift`` on a ResNet-18 against plain inference over the same
files, for the ONNX and the torch backend, with PNG or ``.npy`` samples (issue 13, item 6).

Setup (deterministic, under ``--workdir``, reused when already there):

* ``--samples`` samples of 3 x ``--size`` x ``--size`` (default 256 x 224): PNG files
  (``common.image_array``: smooth random fields plus fine noise) and the same images as
  float32 ``.npy`` files in [0, 1], one sample per file;
* a ResNet-18 built from ``torch.nn`` (``bench/resnet18.py``, torchvision is not needed), random
  init, its BN statistics the population statistics of the first 256 images (so drift is
  small and BN103's diagnosis does not run, as for a model used on its own kind of data),
  saved as TorchScript and exported to ONNX with the BatchNormalization nodes kept.

Timed as child processes from spawn to exit (``common.run_child``: wall time, CPU time and the
child's own peak RSS from ``wait4``):

* ``plain``: :data:`PLAIN` — lists the files in sorted order, decodes each (Pillow, /255,
  (C, H, W); or ``np.load``), stacks batches of 32 and runs an ``onnxruntime`` session (CPU,
  every graph optimisation) or the TorchScript module in eval mode under ``torch.no_grad``,
  taking the argmax;
* ``ms0``: ``python -m bncheck drift MODEL FOLDER -f json --mismatch-samples 0``;
* ``default``: the same with the default ``--mismatch-samples 256``.

Every round runs the plain script and each drift variant once (the order rotating from round
to round), and a variant's figure is the median over ``--rounds`` of its ratios wall(variant) /
wall(plain of the same round), with the peak-RSS ratio beside it. Targets (issue 13): ``ms0`` <= 1.15x at 256 samples, ``default``
<= 1.3x at 2,000, peak RSS <= 1.5x plain.

    python bench/drift_speed.py [--samples 256] [--size 224] [--rounds 1]
        [--backends onnx,torch] [--formats png,npy] [--variants ms0,default,before] [--workdir DIR]
        [--before DIR]

``before``: the default run of another checkout (``--before DIR``, e.g. ``git archive`` of an
older commit), run from DIR with ``PYTHONPATH=DIR``. Only the formats asked for are written
(12,000 ``.npy`` files take 7 GB). Writes ``bench/results/drift_speed-SAMPLES.json``; ``bench/results/drift_speed.md`` holds the figures
measured so far, with the exact commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    RESULTS,
    ROOT,
    calibrate,
    child_env,
    export_onnx,
    image_files,
    load_average,
    load_images_nchw,
    make_image_folder,
    median,
    run_child,
)

BATCH = 32

#: the baseline: what a user would write to run the model over the files
PLAIN = '''\
"""Plain inference: BACKEND MODEL FOLDER."""
import sys
from pathlib import Path

import numpy as np

backend, model, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
npy = any(folder.rglob("*.npy"))
files = sorted(folder.rglob("*.npy" if npy else "*.png"))


def load(path):
    if npy:
        return np.load(path)
    from PIL import Image
    with Image.open(path) as image:
        x = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255)
    return x.transpose(2, 0, 1)


if backend == "onnx":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    run = lambda batch: session.run(None, {name: batch})[0]
else:
    import torch
    module = torch.jit.load(model).eval()
    def run(batch):
        with torch.no_grad():
            return module(torch.from_numpy(batch)).numpy()

count = 0
for start in range(0, len(files), BATCH):
    batch = np.stack([load(p) for p in files[start : start + BATCH]])
    count += len(run(batch).argmax(axis=1))
print(count)
'''.replace("BATCH", str(BATCH))


def prepare(workdir: Path, samples: int, size: int, formats: tuple[str, ...] = ("png", "npy")) -> dict:
    """The PNG and (when ``formats`` has it) .npy folders, the TorchScript and ONNX models, the
    plain script."""
    import torch
    from resnet18 import resnet18

    png = make_image_folder(workdir / f"png-{samples}-{size}", samples, size, classes=1)
    npy = workdir / f"npy-{samples}-{size}"
    if "npy" in formats and not (npy / ".complete").exists():
        npy.mkdir(parents=True, exist_ok=True)
        for k, path in enumerate(image_files(png)):
            np.save(npy / f"{k:06d}.npy", load_images_nchw([path])[0])
        (npy / ".complete").touch()
    models = {"onnx": workdir / f"resnet18-{size}.onnx", "torch": workdir / f"resnet18-{size}.ts"}
    if not all(p.exists() for p in models.values()):
        torch.manual_seed(0)
        model = resnet18()
        x = load_images_nchw(image_files(png)[:256])
        calibrate(model, [x[i : i + BATCH] for i in range(0, len(x), BATCH)])
        export_onnx(model, (3, size, size), models["onnx"])
        torch.jit.script(model.eval()).save(str(models["torch"]))
    script = workdir / "plain_inference.py"
    script.write_text(PLAIN)
    return {"folders": {"png": png, "npy": npy}, "models": models, "script": script}


def commands(setup: dict, backend: str, fmt: str, before: Path | None = None) -> dict[str, list[str]]:
    model, folder = str(setup["models"][backend]), str(setup["folders"][fmt])
    drift = [sys.executable, "-m", "bncheck", "drift", model, folder, "-f", "json"]
    cmds = {
        "plain": [sys.executable, str(setup["script"]), backend, model, folder],
        "ms0": [*drift, "--mismatch-samples", "0"],
        "default": drift,
    }
    if before is not None:  # the default run of another checkout (``--before DIR``), run from DIR
        cmds["before"] = drift
    return cmds


def paired(cmds: dict[str, list[str]], variants: list[str], rounds: int, env: dict, before: Path | None = None) -> dict:
    """Every round runs the plain script and each variant once, the order rotating from round
    to round; each variant's ratios are to its round's plain run."""
    names = ["plain", *variants]
    runs: dict[str, list] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            where = before if name == "before" else ROOT
            run = run_child(cmds[name], cwd=where, env={**env, "PYTHONPATH": str(where)})
            if run.returncode not in (0, 1):
                raise SystemExit(f"{name} failed ({run.returncode}): {run.stderr[-2000:]}")
            runs[name].append(run)
            print(f"  round {r + 1} {name}: {run.wall_s:.1f} s, {run.max_rss_bytes / 2**20:.0f} MB, load {load_average()}", flush=True)
    return {variant: _figures(runs["plain"], runs[variant]) for variant in variants}


def _figures(plain: list, variant: list) -> dict:
    walls = [v.wall_s / p.wall_s for p, v in zip(plain, variant, strict=True)]
    rss = [v.max_rss_bytes / p.max_rss_bytes for p, v in zip(plain, variant, strict=True)]
    cpu = [(v.user_s + v.sys_s) / (p.user_s + p.sys_s) for p, v in zip(plain, variant, strict=True)]
    runs = {"plain": plain, "variant": variant}
    return {
        "ratio_wall_median": median(walls),
        "ratio_cpu_median": median(cpu),
        "ratio_rss_median": median(rss),
        "ratios_wall": [round(w, 3) for w in walls],
        "plain_wall_s": [round(p.wall_s, 2) for p in runs["plain"]],
        "variant_wall_s": [round(v.wall_s, 2) for v in runs["variant"]],
        "plain_rss_mb": [round(p.max_rss_bytes / 2**20) for p in runs["plain"]],
        "variant_rss_mb": [round(v.max_rss_bytes / 2**20) for v in runs["variant"]],
        "variant_cpu_s": [round(v.user_s + v.sys_s, 2) for v in runs["variant"]],
        "plain_cpu_s": [round(p.user_s + p.sys_s, 2) for p in runs["plain"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--backends", default="onnx,torch")
    parser.add_argument("--formats", default="png")
    parser.add_argument("--variants", default="ms0,default")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bncheck-drift-speed"))
    parser.add_argument("--before", type=Path, default=None, help="a checkout of the code before (variant 'before': its default run)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    setup = prepare(args.workdir, args.samples, args.size, tuple(args.formats.split(",")))
    env = child_env(args.workdir / "pycache")
    results = {"samples": args.samples, "size": args.size, "rounds": args.rounds, "load_before": load_average(), "runs": {}}
    for backend in args.backends.split(","):
        for fmt in args.formats.split(","):
            cmds = commands(setup, backend, fmt, args.before)
            start = time.perf_counter()
            by_variant = paired(cmds, args.variants.split(","), args.rounds, env, args.before)
            for variant, figures in by_variant.items():
                key = f"{backend}/{fmt}/{variant}"
                results["runs"][key] = figures
                print(
                    f"{key:22s} wall x{figures['ratio_wall_median']:.3f} CPU x{figures['ratio_cpu_median']:.3f} (plain {figures['plain_wall_s']} s, "
                    f"drift {figures['variant_wall_s']} s)  peak RSS x{figures['ratio_rss_median']:.2f} "
                    f"({figures['plain_rss_mb']} -> {figures['variant_rss_mb']} MB)  [{time.perf_counter() - start:.0f} s]",
                    flush=True,
                )
    results["load_after"] = load_average()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"drift_speed-{args.samples}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
