"""Acceptance figures of `bncheck recalibrate --method exact` on a ResNet-18-sized model.

Builds bench/resnet18.py's ResNet-18 (20 BN layers, 11.7M parameters) with deliberately wrong
running statistics, recalibrates it on random-image data with both backends (torch state dict
+ --arch, and the same model exported to ONNX), and reports:

* the number of passes over the data;
* after recalibration, the drift of OUT on the same DATA: mean |z| per layer (< 0.01 required in
  every layer) and mean |r| (< 0.01 required in every layer seeing over 1000 elements per channel);
* agreement of the ONNX and torch statistics (rtol 1e-4 required);
* wall time.

    python bench/recalibrate_exact.py [--samples 512] [--size 64]
Writes bench/results/recalibrate_exact.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from resnet18 import resnet18  # noqa: E402

import bncheck  # noqa: E402
from bncheck.commands.recalibrate import RecalibrateOptions  # noqa: E402
from bncheck.data import DataOptions  # noqa: E402

ARCH = """
import sys
sys.path.insert(0, {here!r})
from resnet18 import resnet18
def model():
    return resnet18(num_classes=10).eval()
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--tag", default="", help="suffix of the results file (e.g. -before)")
    args = parser.parse_args()
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bncheck-recal-"))
    arch = tmp / "arch.py"
    arch.write_text(ARCH.format(here=str(HERE)))
    model = resnet18(num_classes=10).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # stale statistics from "another domain"
            m.running_mean.normal_(0.0, 0.5, generator=gen)
            m.running_var.uniform_(0.2, 3.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
    state = tmp / "model.pt"
    torch.save(model.state_dict(), state)
    rng = np.random.default_rng(0)
    x = rng.normal(0.45, 0.25, size=(args.samples, 3, args.size, args.size)).astype(np.float32)
    data = tmp / "data.npy"
    np.save(data, x)
    onnx_path = tmp / "model.onnx"
    torch.onnx.export(
        model, (torch.from_numpy(x[:2]),), str(onnx_path), dynamo=False, do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL, input_names=["input"], dynamic_axes={"input": {0: "batch"}},
    )
    results = {"model": "resnet18 (20 BN layers)", "samples": args.samples, "input": [3, args.size, args.size]}
    stats = {}
    for backend, model_path, out, kw in (
        ("torch", state, tmp / "out.pt", {"arch": f"{arch}:model"}),
        ("onnx", onnx_path, tmp / "out.onnx", {}),
    ):
        start = time.perf_counter()
        fields = RecalibrateOptions.__dataclass_fields__
        extra = {"holdout": 0.0} if "holdout" in fields else {}  # every sample, as before the guard existed
        report = bncheck.recalibrate(
            model_path, data, out, options=RecalibrateOptions(method="exact", data_options=DataOptions(workers=0), **extra), **kw
        )
        wall = time.perf_counter() - start
        rc = report.extras["recalibration"]
        layers = []
        ok = True
        for layer in report.layers:
            after = report.layer_extras[layer.name]["after"]
            per_channel = after["elements"]
            z, r = after["mean_shift"]["mean"], after["var_log_ratio"]["mean"]
            passed = z < 0.01 and (r < 0.01 or per_channel <= 1000)
            ok &= passed
            layers.append({
                "layer": layer.name, "elements_per_channel": per_channel, "mean_abs_z": z, "mean_abs_r": r,
                "max_abs_z": after["mean_shift"]["max"], "max_abs_r": after["var_log_ratio"]["max"], "passed": passed,
            })  # fmt: skip
        results[backend] = {
            "wall_s": wall,
            "estimation_passes": rc["estimation_passes"],
            "total_passes": rc["total_passes"],
            "movement_per_pass": [p["movement"] for p in rc["passes"]],
            "max_mean_abs_z": max(item["mean_abs_z"] for item in layers),
            "max_mean_abs_r": max(item["mean_abs_r"] for item in layers),
            # the worst channel of any layer: written statistics against what OUT's layers see
            "worst_channel_z": max(item["max_abs_z"] for item in layers),
            "worst_channel_r": max(item["max_abs_r"] for item in layers),
            "acceptance_passed": bool(ok),
            "layers": layers,
        }
        src = bncheck.load_model(out, **kw)
        stats[backend] = [(la.running_mean, la.running_var) for la in src.bn_layers()]
    # ONNX node order may differ from module order: match every torch layer to its ONNX twin
    worst = 0.0
    remaining = list(stats["onnx"])
    for tm, tv in stats["torch"]:
        def rel(pair, tm=tm, tv=tv):
            om, ov = pair
            if om.shape != tm.shape:
                return float("inf")
            # means in units of the channel's standard deviation (a mean near 0 has no relative scale)
            return max(float(np.max(np.abs(tm - om) / np.sqrt(tv))), float(np.max(np.abs(tv - ov) / np.abs(tv))))
        best = min(range(len(remaining)), key=lambda i: rel(remaining[i]))
        worst = max(worst, rel(remaining.pop(best)))
    results["torch_vs_onnx_max_rel_diff"] = worst
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"recalibrate_exact{args.tag}.json").write_text(json.dumps(results, indent=2))
    for backend in ("torch", "onnx"):
        b = results[backend]
        print(
            f"{backend:5s}: {b['estimation_passes']} estimation passes ({b['total_passes']} with before/after drift), "
            f"{b['wall_s']:.1f} s; after: max mean|z| {b['max_mean_abs_z']:.2e}, max mean|r| {b['max_mean_abs_r']:.2e}, "
            f"worst channel |z| {b['worst_channel_z']:.2e}, |r| {b['worst_channel_r']:.2e}; "
            f"movement per pass {['-' if m is None else f'{m:.1e}' for m in b['movement_per_pass']]}; "
            f"acceptance {'PASSED' if b['acceptance_passed'] else 'FAILED'}"
        )
    print(f"torch vs ONNX statistics: max relative difference {worst:.1e} (rtol 1e-4 required)")
    return 0 if results["torch"]["acceptance_passed"] and results["onnx"]["acceptance_passed"] and worst < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
