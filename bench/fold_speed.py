"""How much ``bncheck fold`` speeds a model up, how exact it is, and how fast it folds ONNX.

1. **ResNet-18, torch eager on CPU** (``bench/resnet18.py``, BN statistics set to
   trained-looking values): the original module, bncheck's folded model
   (``bncheck.commands.fold``'s graph mode, the ``GraphModule`` written to ``.pt2``/``.ts``/``.onnx``)
   and ``torch.fx.experimental.optimization.fuse`` (for comparison) are timed *interleaved*
   (one call of each per round, the order rotating), batch 1 at 224x224, under
   ``torch.inference_mode``; figures are medians, speedups are ratios of medians (other
   processes share the CPU, so ratios are what to quote). Max relative error =
   max|original - folded| / max|original| over 8 random inputs. Targets: speedup >= 1.3x,
   max relative error <= 1e-5.
2. **ResNet-50 ONNX** (``bench/audit_resnet50.py``'s definition, exported with the legacy
   exporter, ``do_constant_folding=False`` and ``TrainingMode.PRESERVE`` so that all 53 BN
   nodes remain): time of the rewrite (load, fold every BN, onnx.checker, write), target
   < 5 s, and of the whole ``bncheck.commands.fold`` call including verification with onnxruntime
   on 1 random input; then the number of BN nodes left in Conv/ConvTranspose/Gemm + BN
   patterns (target 0).

Prints the figures and writes ``bench/results/fold_speed.json`` (git-ignored); ``--strict``
makes the script exit 1 when a target is missed.

    python bench/fold_speed.py [--rounds 15] [--batch 1] [--threads N] [--strict]

On a CPU where the convolutions dominate, removing BN cannot give much: the script also
records the share of profiled CPU time spent in batch-norm kernels, which (with the Python
cost of 20 module calls) is all that folding can remove.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "fold_speed.json"
TARGET_SPEEDUP = 1.3
TARGET_REL_ERR = 1e-5
TARGET_ONNX_S = 5.0


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bncheck_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trained_looking(model, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.05)
                m.weight.copy_(torch.rand(c, generator=generator) * 0.8 + 0.2)
                m.bias.copy_(torch.randn(c, generator=generator) * 0.1)
    return model.eval()


def _bn_share(model, x) -> float:
    """Fraction of CPU time spent in batch-norm kernels during inference of ``model``."""
    with torch.inference_mode():
        model(x)
        with torch.profiler.profile() as prof:
            for _ in range(3):
                model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    bn = sum(e.self_cpu_time_total for e in events if "batch_norm" in e.key)
    return bn / total if total else 0.0


def bench_resnet18(rounds: int, batch: int) -> dict:
    from torch.fx.experimental.optimization import fuse

    from bncheck.backends.torch import fold as torch_fold
    from bncheck.backends.torch.source import TorchModuleSource
    from bncheck.commands.fold import fold

    torch.manual_seed(0)
    model = _trained_looking(_load("resnet18").resnet18())
    shape = (batch, 3, 224, 224)
    report = fold(model, input_shape=",".join(map(str, shape)), samples=8, timing=False)
    layers = TorchModuleSource(model, path=None, format="module").bn_layers()
    folded = torch_fold.fold_module(model, layers, example=(torch.randn(*shape),)).model.eval()
    fx_fused = fuse(copy.deepcopy(model)).eval()

    inputs = [torch.randn(*shape, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    rel = 0.0
    rel_fx = 0.0
    with torch.inference_mode():
        for x in inputs:
            a, b, c = model(x), folded(x), fx_fused(x)
            rel = max(rel, ((a - b).abs().max() / a.abs().max()).item())
            rel_fx = max(rel_fx, ((a - c).abs().max() / a.abs().max()).item())

    variants = {"original": model, "bncheck": folded, "torch.fx fuse": fx_fused}
    times: dict[str, list[float]] = {k: [] for k in variants}
    x = inputs[0]
    names = list(variants)
    with torch.inference_mode():
        for fn in variants.values():  # warm-up
            fn(x)
            fn(x)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                start = time.perf_counter()
                variants[name](x)
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    share = _bn_share(model, x)
    return {
        "model": "ResNet-18 (bench/resnet18.py), 20 BatchNorm2d",
        "input": list(shape),
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "median_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
        "speedup_bncheck": round(med["original"] / med["bncheck"], 3),
        "speedup_fx_fuse": round(med["original"] / med["torch.fx fuse"], 3),
        "bncheck_vs_fx_fuse": round(med["torch.fx fuse"] / med["bncheck"], 3),
        "batch_norm_kernel_share": round(share, 4),
        "max_rel_err_bncheck": rel,
        "max_rel_err_fx_fuse": rel_fx,
        "layers_folded": report.extras["fold"]["layers_folded"],
        "verification": report.extras["verification"],
        "targets": {"speedup": TARGET_SPEEDUP, "max_rel_err": TARGET_REL_ERR},
        "met": med["original"] / med["bncheck"] >= TARGET_SPEEDUP and rel <= TARGET_REL_ERR,
    }


def bench_resnet50_onnx() -> dict:
    import onnx

    from bncheck.backends.onnx.fold import fold_onnx
    from bncheck.backends.onnx.source import OnnxSource
    from bncheck.backends.onnx.write import write_onnx
    from bncheck.commands.fold import fold

    resnet = _load("audit_resnet50")
    model = resnet.trained_looking(resnet.resnet50())
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "resnet50.onnx"
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.randn(1, 3, 224, 224),),
                str(src),
                dynamo=False,
                opset_version=17,
                do_constant_folding=False,
                training=torch.onnx.TrainingMode.PRESERVE,
                input_names=["x"],
                dynamic_axes={"x": {0: "batch"}},
            )
        export_s = time.perf_counter() - start
        bn_before = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(src)).graph.node)

        start = time.perf_counter()
        source = OnnxSource.load(src)
        result = fold_onnx(source)
        write_onnx(result.model, Path(tmp) / "rewrite.onnx")
        rewrite_s = time.perf_counter() - start

        start = time.perf_counter()
        report = fold(src, Path(tmp) / "folded.onnx", samples=1, timing=False)
        command_s = time.perf_counter() - start

        folded = onnx.load(str(Path(tmp) / "folded.onnx"))
        producer = {o: n for n in folded.graph.node for o in n.output}
        bn_nodes = [n for n in folded.graph.node if n.op_type == "BatchNormalization"]
        in_patterns = [
            n
            for n in bn_nodes
            if n.input[0] in producer
            and producer[n.input[0]].op_type in ("Conv", "ConvTranspose", "Gemm")
        ]
        size_mb = src.stat().st_size / 2**20
    return {
        "model": "ResNet-50 (bench/audit_resnet50.py), legacy exporter, opset 17, BN nodes kept",
        "file_mb": round(size_mb, 1),
        "export_s": round(export_s, 2),
        "bn_nodes_before": bn_before,
        "layers_folded": report.extras["fold"]["layers_folded"],
        "rewrite_s": round(rewrite_s, 3),
        "command_s_with_verification": round(command_s, 3),
        "verification": report.extras["verification"],
        "bn_nodes_after": len(bn_nodes),
        "bn_left_in_conv_gemm_patterns": len(in_patterns),
        "nodes": report.extras["fold"]["nodes"],
        "target_s": TARGET_ONNX_S,
        "met": rewrite_s < TARGET_ONNX_S and not in_patterns,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r18 = bench_resnet18(args.rounds, args.batch)
    r50 = bench_resnet50_onnx()
    results = {
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "platform": platform.platform(),
            "numpy": np.__version__,
        },
        "resnet18_torch_eager": r18,
        "resnet50_onnx_fold": r50,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    m = r18["median_ms"]
    print(
        f"ResNet-18 eager, batch {args.batch} @224, {r18['rounds']} interleaved rounds, {r18['threads']} threads (medians):"
    )
    print(
        f"  original {m['original']:.1f} ms | bncheck {m['bncheck']:.1f} ms | torch.fx fuse {m['torch.fx fuse']:.1f} ms"
    )
    print(
        f"  speedup bncheck {r18['speedup_bncheck']:.2f}x (target >= {TARGET_SPEEDUP}x), torch.fx fuse {r18['speedup_fx_fuse']:.2f}x"
    )
    print(
        f"  batch-norm kernels: {r18['batch_norm_kernel_share']:.1%} of the original's profiled CPU time (what folding removes, plus call overhead)"
    )
    print(
        f"  max relative error bncheck {r18['max_rel_err_bncheck']:.2e} (target <= {TARGET_REL_ERR:g}), fx fuse {r18['max_rel_err_fx_fuse']:.2e}"
    )
    print(f"ResNet-50 ONNX ({r50['file_mb']} MB, {r50['bn_nodes_before']} BN nodes):")
    print(
        f"  rewrite {r50['rewrite_s']:.2f} s (target < {TARGET_ONNX_S:g} s); whole fold call with verification {r50['command_s_with_verification']:.2f} s"
    )
    print(
        f"  folded {r50['layers_folded']}, BN left in Conv/Gemm patterns: {r50['bn_left_in_conv_gemm_patterns']}, max rel err {r50['verification']['max_rel_err']:.2e}"
    )
    print(f"results: {RESULTS}")
    return 1 if args.strict and not (r18["met"] and r50["met"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
