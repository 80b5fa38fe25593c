"""Cost of the whole `bncheck recalibrate --method cumulative` command (before/after report and
guard included) against a plain PyTorch script that does only `torch.optim.swa_utils.update_bn`
over the same files, both as fresh processes (imports, loading, the pass, writing).

Model: bench/resnet18.py's ResNet-18 (torch.nn only, 20 BatchNorm2d), stale running statistics,
saved as a state dict; data: one .npy file of random images. The issue's target: at most 1.3x.

    python bench/recalibrate_speed.py [--samples 128] [--size 112] [--batch-size 32] [--repeat 1]

Prints the wall times and ratios (the default command, whose guard runs the stored and the
recalibrated model on a 10% held-out split; and with --holdout 0), and how far bncheck's
statistics with --holdout 0 (both read every sample) are from update_bn's. Writes
bench/results/recalibrate_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from resnet18 import resnet18  # noqa: E402

ARCH = """
import sys
sys.path.insert(0, {here!r})
from resnet18 import resnet18
def model():
    return resnet18(num_classes=10).eval()
"""

PLAIN = """
import sys
import numpy as np
import torch
sys.path.insert(0, {here!r})
from resnet18 import resnet18

model = resnet18(num_classes=10)
model.load_state_dict(torch.load({model!r}, weights_only=True))
x = np.load({data!r})
loader = [torch.from_numpy(x[i : i + {batch}]) for i in range(0, len(x), {batch})]
torch.optim.swa_utils.update_bn(loader, model)
torch.save(model.state_dict(), {out!r})
"""


def _timed(argv: list[str]) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"{argv[:4]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the fastest is kept")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bncheck-speed-"))
    (tmp / "arch.py").write_text(ARCH.format(here=str(HERE)))
    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.5, generator=gen)
            m.running_var.uniform_(0.2, 3.0, generator=gen)
    torch.save(model.state_dict(), tmp / "model.pt")
    x = np.random.default_rng(0).normal(0.45, 0.25, size=(args.samples, 3, args.size, args.size)).astype(np.float32)
    np.save(tmp / "data.npy", x)
    plain = tmp / "plain.py"
    plain.write_text(PLAIN.format(here=str(HERE), model=str(tmp / "model.pt"), data=str(tmp / "data.npy"), batch=args.batch_size, out=str(tmp / "plain.pt")))
    command = [
        sys.executable, "-m", "bncheck", "recalibrate", str(tmp / "model.pt"), str(tmp / "data.npy"), "--arch", f"{tmp / 'arch.py'}:model",
        "--method", "cumulative", "-b", str(args.batch_size), "--force", "-q",
    ]  # fmt: skip
    walls: dict[str, list[float]] = {"update_bn": [], "bncheck": [], "bncheck_holdout_0": []}
    for _ in range(args.repeat):
        walls["update_bn"].append(_timed([sys.executable, str(plain)]))
        walls["bncheck"].append(_timed([*command, "--out", str(tmp / "out.pt")]))
        walls["bncheck_holdout_0"].append(_timed([*command, "--out", str(tmp / "all.pt"), "--holdout", "0"]))
    ours, ref = torch.load(tmp / "all.pt", weights_only=True), torch.load(tmp / "plain.pt", weights_only=True)
    # means in units of the channel's standard deviation (a mean near 0 has no relative scale)
    worst = max(
        max(
            float(((ours[f"{p}.running_mean"].double() - ref[f"{p}.running_mean"].double()).abs() / ref[f"{p}.running_var"].double().sqrt()).max()),
            float(((ours[f"{p}.running_var"].double() - ref[f"{p}.running_var"].double()).abs() / ref[f"{p}.running_var"].double()).max()),
        )
        for p in (k[: -len(".running_mean")] for k in ref if k.endswith(".running_mean"))
    )  # fmt: skip
    best = {k: min(v) for k, v in walls.items()}
    ratio = best["bncheck"] / best["update_bn"]
    unguarded = best["bncheck_holdout_0"] / best["update_bn"]
    results = {
        "model": "resnet18 (torch.nn, 20 BatchNorm2d)", "samples": args.samples, "input": [3, args.size, args.size],
        "batch_size": args.batch_size, "cpus": os.cpu_count(), "walls_s": walls, "best_s": best, "ratio": ratio, "ratio_holdout_0": unguarded,
        "max_rel_diff_vs_update_bn": worst, "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "recalibrate_speed.json").write_text(json.dumps(results, indent=2))
    print(
        f"{args.samples} samples of 3x{args.size}x{args.size}, batch {args.batch_size}: update_bn script {best['update_bn']:.1f} s, "
        f"bncheck recalibrate --method cumulative {best['bncheck']:.1f} s: {ratio:.2f}x (target <= 1.3x), "
        f"without the held-out check (--holdout 0) {best['bncheck_holdout_0']:.1f} s: {unguarded:.2f}x; "
        f"statistics vs update_bn (--holdout 0): max relative difference {worst:.1e}"
    )
    return 0 if ratio <= 1.3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
