"""Throughput of ``bncheck drift``'s statistics collection against plain inference.

A ResNet-18 (20 BatchNorm2d layers, 11.7M parameters; ``bench/resnet18.py``) runs the same
in-memory batches through

* plain inference: ``model(x)`` in eager PyTorch (``torch.inference_mode``), and an
  onnxruntime session on the exported ONNX model (CPU EP, all graph optimisations, default
  threads);
* bncheck's runner: ``runner.moments(x)``, which returns the same outputs plus the per-channel
  moments of every BN layer's input.

Plain and runner run in alternating blocks of 6 batches (see :func:`interleaved` for why not
batch by batch), so that load from other processes hits both alike; the figure of merit is the
median over rounds of ``time(plain block) / time(runner block)`` (the throughput ratio; the
requirement is >= 0.9). The ratio of the best single-batch times is reported too.

``--compare-strategies`` also times the alternative ways of computing the moments that were
considered (torch: ``var_mean`` in float32 / float64, explicit two-pass; onnxruntime: ReduceMean
+ ReduceSumSquare, a float64 cast, a training-mode BatchNormalization as statistics op, per-sample
centring, the one-pass sum of squares) against the same plain baseline, with their worst relative variance error on data
whose mean/std is 1e3.

Results go to ``bench/results/drift_throughput.json`` and are printed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from resnet18 import resnet18  # noqa: E402

from bncheck.backends.onnx.source import OnnxSource  # noqa: E402
from bncheck.backends.torch.runner import channel_moments  # noqa: E402
from bncheck.backends.torch.source import TorchModuleSource  # noqa: E402

REQUIRED_RATIO = 0.9


def build_model(size: int, seed: int = 0) -> torch.nn.Module:
    """ResNet-18 with running statistics from a few train-mode batches (not the 0/1 defaults)."""
    torch.manual_seed(seed)
    model = resnet18()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 3, size, size))
    return model.eval()


def export_onnx(model: torch.nn.Module, size: int, path: Path) -> Path:
    """Legacy exporter without constant folding, so the BatchNormalization nodes stay."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.rand(2, 3, size, size),),
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def ort_session(model_or_path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    data = (
        model_or_path.SerializeToString()
        if isinstance(model_or_path, onnx.ModelProto)
        else str(model_or_path)
    )
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def interleaved(variants: dict, batches: list[np.ndarray], rounds: int, block: int = 6) -> dict:
    """Time every variant in blocks: in each round every variant (order alternating between
    rounds) makes one untimed call, then ``block`` timed calls over ``batches``. Returns, per
    variant, the median throughput, the median over rounds of ``time(plain block) /
    time(variant block)`` (the headline figure: plain and variant measured minutes apart at
    most, in the same process) and the ratio of the best single-batch times.

    Blocks rather than alternating single calls: an onnxruntime session's intra-op threads keep
    spinning for a while after ``run`` returns, so a call that follows another session's call
    competes with those threads for the cores. Alternating single calls made each variant pay
    that toll about half the time and split the timings into two modes (65 vs 100 ms per batch
    on this machine); within a block, as in a real run, a session follows itself."""
    for fn in variants.values():  # warm-up (allocations, lazy sessions, JIT profiling)
        fn(batches[0])
        fn(batches[0])
    names = list(variants)
    seconds: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            variants[name](batches[0])  # settles the other session's spinning threads
            times = []
            for i in range(block):
                x = batches[i % len(batches)]
                start = time.perf_counter()
                variants[name](x)
                times.append(time.perf_counter() - start)
            seconds[name].append(times)
    sizes = np.array([len(batches[i % len(batches)]) for i in range(block)])
    plain = np.array(seconds["plain"])
    out = {}
    for name in names:
        t = np.array(seconds[name])
        out[name] = {
            "samples_per_s_median": round(float(np.median(sizes[None, :] / t)), 2),
            "ratio_vs_plain_median": round(float(np.median(plain.sum(1) / t.sum(1))), 4),
            "ratio_of_best_times": round(float(plain.min() / t.min()), 4),
            "seconds": [round(v, 4) for v in t.reshape(-1)],
        }
    return out


# ------------------------------------------------------------------------ bncheck runners


def bench_torch(model, batches, rounds) -> dict:
    def plain(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    with TorchModuleSource(model, path=None, format="module").runner() as runner:
        out, moments = runner.moments(batches[0])
        check = {
            "layers_observed": len(moments),
            "max_abs_output_diff": float(np.abs(out - plain(batches[0])).max()),
        }
        timings = interleaved({"plain": plain, "moments": runner.moments}, batches, rounds)
    return {**timings, "check": check}


def bench_onnx(path: Path, batches, rounds) -> dict:
    session = ort_session(path)
    name = session.get_inputs()[0].name

    def plain(x):
        return session.run(None, {name: x})[0]

    with OnnxSource.load(path).runner() as runner:
        out, moments = runner.moments(batches[0])
        check = {
            "layers_observed": len(moments),
            "max_abs_output_diff": float(np.abs(out - plain(batches[0])).max()),
        }
        timings = interleaved({"plain": plain, "moments": runner.moments}, batches, rounds)
    return {**timings, "check": check}


# ------------------------------------------------------------------------ alternatives


def _torch_hooks(model, reduce):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    store: list = []

    def run(x):
        handles = [
            bn.register_forward_pre_hook(lambda mod, args: store.append(reduce(args[0])))
            for bn in bns
        ]
        try:
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()
        finally:
            for h in handles:
                h.remove()
            store.clear()

    return run


def _two_pass(t):
    mean = t.mean(dim=(0, 2, 3), keepdim=True)
    return mean, (t - mean).square_().sum(dim=(0, 2, 3))


#: name -> (reduction run in the hook, its result -> population variance given n per channel)
TORCH_ALTERNATIVES = {
    "var_mean_float32": (
        lambda t: torch.var_mean(t, dim=(0, 2, 3), correction=0),
        lambda out, n: out[0],
    ),
    "var_mean_float64": (
        lambda t: torch.var_mean(t.double(), dim=(0, 2, 3), correction=0),
        lambda out, n: out[0],
    ),
    "two_pass_over_NHW": (_two_pass, lambda out, n: out[1] / n),
    "batch_norm_update_stats": (
        lambda t: torch.batch_norm_update_stats(t, None, None, 0.0),
        lambda out, n: out[1],
    ),
}


def _torch_var_error(reduce, to_var) -> float:
    x = 1e3 + torch.randn(16, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = x.double().var(dim=(0, 2, 3), correction=0)
    var = to_var(reduce(x), x.numel() // x.shape[1]).double()
    return float(((var - ref).abs() / ref).max())


def _onnx_variant(base: onnx.ModelProto, kind: str) -> onnx.ModelProto:
    model = copy.deepcopy(base)
    graph = model.graph
    channels = {
        layer.input_name: layer.num_features for layer in OnnxSource(base, path=None).bn_layers()
    }
    nodes, outputs = [], []
    for i, node in enumerate(list(graph.node)):
        if node.op_type != "BatchNormalization":
            continue
        x, p = node.input[0], f"alt{i}/"
        if kind == "reducemean_sub_reducesumsquare":
            nodes += [
                helper.make_node("ReduceMean", [x], [p + "m"], axes=[0, 2, 3], keepdims=1),
                helper.make_node("Sub", [x, p + "m"], [p + "d"]),
                helper.make_node(
                    "ReduceSumSquare", [p + "d"], [p + "q"], axes=[0, 2, 3], keepdims=0
                ),
            ]
        elif kind == "cast_float64_two_pass":
            nodes += [
                helper.make_node("Cast", [x], [p + "x64"], to=TensorProto.DOUBLE),
                helper.make_node("ReduceMean", [p + "x64"], [p + "m"], axes=[0, 2, 3], keepdims=1),
                helper.make_node("Sub", [p + "x64", p + "m"], [p + "d"]),
                helper.make_node(
                    "ReduceSumSquare", [p + "d"], [p + "q"], axes=[0, 2, 3], keepdims=0
                ),
            ]
        elif kind == "training_batchnorm_as_stats_op":
            c = channels[x]
            graph.initializer.extend(
                [
                    numpy_helper.from_array(np.ones(c, np.float32), p + "one"),
                    numpy_helper.from_array(np.zeros(c, np.float32), p + "zero"),
                ]
            )
            nodes.append(
                helper.make_node(
                    "BatchNormalization",
                    [x, p + "one", p + "zero", p + "zero", p + "one"],
                    [p + "y", p + "m", p + "q"],
                    training_mode=1,
                    momentum=0.0,
                )
            )
        elif kind == "two_pass_at_batch_mean":  # bncheck's form before the shifted one pass
            nodes += [
                helper.make_node("GlobalAveragePool", [x], [p + "m_nc"]),
                helper.make_node("ReduceMean", [p + "m_nc"], [p + "m"], axes=[0], keepdims=1),
                helper.make_node("Sub", [x, p + "m"], [p + "d"]),
                helper.make_node("Mul", [p + "d", p + "d"], [p + "d2"]),
                helper.make_node("GlobalAveragePool", [p + "d2"], [p + "q"]),
            ]
        elif kind == "one_pass_sum_of_squares":
            nodes += [
                helper.make_node("GlobalAveragePool", [x], [p + "m"]),
                helper.make_node("Mul", [x, x], [p + "x2"]),
                helper.make_node("GlobalAveragePool", [p + "x2"], [p + "q"]),
            ]
        elif kind == "per_sample_centring":
            nodes += [
                helper.make_node("GlobalAveragePool", [x], [p + "m"]),
                helper.make_node("Sub", [x, p + "m"], [p + "d"]),
                helper.make_node("Mul", [p + "d", p + "d"], [p + "d2"]),
                helper.make_node("GlobalAveragePool", [p + "d2"], [p + "q"]),
            ]
        else:
            raise ValueError(kind)
        elem = TensorProto.DOUBLE if kind == "cast_float64_two_pass" else TensorProto.FLOAT
        outputs += [helper.make_tensor_value_info(p + k, elem, None) for k in ("m", "q")]
    graph.node.extend(nodes)
    graph.output.extend(outputs)
    return model


ONNX_ALTERNATIVES = (
    "two_pass_at_batch_mean",
    "one_pass_sum_of_squares",
    "reducemean_sub_reducesumsquare",
    "cast_float64_two_pass",
    "training_batchnorm_as_stats_op",
    "per_sample_centring",
)


def _onnx_var_errors() -> dict[str, float]:
    """Worst relative variance error of each ONNX strategy (and bncheck's) on a BN whose input
    has mean/std = 1e3."""
    from bncheck.backends.onnx.runner import OnnxRunner

    rng = np.random.default_rng(0)
    c = 8
    x = (1e3 + rng.standard_normal((16, c, 8, 8))).astype(np.float32)
    ref = x.astype(np.float64).var(axis=(0, 2, 3))
    inits = [
        numpy_helper.from_array(v.astype(np.float32), n)
        for n, v in (("s", np.ones(c)), ("b", np.zeros(c)), ("m", np.zeros(c)), ("v", np.ones(c)))
    ]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 8, 8])],
        initializer=inits,
    )
    base = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    base.ir_version = 8
    errors = {}
    n_per_channel = x.size // c
    for kind in ONNX_ALTERNATIVES:
        m, q = ort_session(_onnx_variant(base, kind)).run(None, {"x": x})[1:3]
        q = np.asarray(q, np.float64)
        if kind == "training_batchnorm_as_stats_op":
            var = q
        elif kind == "two_pass_at_batch_mean":
            var = q.reshape(16, c).mean(axis=0)
        elif kind in ("per_sample_centring", "one_pass_sum_of_squares"):
            mean_ns = np.asarray(m, np.float64).reshape(16, c)
            within = q.reshape(16, c) - (mean_ns**2 if kind == "one_pass_sum_of_squares" else 0)
            between = ((mean_ns - mean_ns.mean(axis=0)) ** 2).mean(axis=0)
            var = within.mean(axis=0) + between
        else:
            var = q / n_per_channel
        errors[kind] = float(np.max(np.abs(var.reshape(-1) / ref - 1)))
    with OnnxRunner(OnnxSource(base, path=None)) as runner:
        (moments,) = runner.moments(x)[1].values()
    errors["bncheck"] = float(np.max(np.abs(moments.var / ref - 1)))
    return errors


def _runs(session: ort.InferenceSession):
    return lambda x: session.run(None, {"input": x})


def bench_alternatives(model, onnx_path: Path, batches, rounds) -> dict:
    torch_variants = {"plain": _torch_hooks(model, lambda t: None)}
    torch_variants.update({k: _torch_hooks(model, f) for k, (f, _) in TORCH_ALTERNATIVES.items()})
    torch_runner = TorchModuleSource(model, path=None, format="module").runner()
    torch_variants["bncheck"] = torch_runner.moments
    torch_result = interleaved(torch_variants, batches, rounds)
    torch_runner.close()
    torch_result["bncheck"]["var_rel_error_at_mean_1e3_std"] = _torch_var_error(
        lambda t: channel_moments(t), lambda out, n: out[2] / n
    )
    for key, (reduce, to_var) in TORCH_ALTERNATIVES.items():
        torch_result[key]["var_rel_error_at_mean_1e3_std"] = _torch_var_error(reduce, to_var)
    base = onnx.load(str(onnx_path))
    sessions = {"plain": ort_session(base)}
    sessions.update({k: ort_session(_onnx_variant(base, k)) for k in ONNX_ALTERNATIVES})
    runner = OnnxSource(base, path=None).runner()
    onnx_variants = {k: _runs(session) for k, session in sessions.items()}
    onnx_variants["bncheck"] = runner.moments
    onnx_result = interleaved(onnx_variants, batches, rounds)
    runner.close()
    for key, err in _onnx_var_errors().items():
        onnx_result[key]["var_rel_error_at_mean_1e3_std"] = err
    return {"torch": torch_result, "onnx": onnx_result}


# ------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", type=int, default=112, help="input height and width (default 112)"
    )
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--batches", type=int, default=2, help="distinct batches (default 2)")
    parser.add_argument(
        "--rounds", type=int, default=12, help="blocks of 6 batches per variant (default 12)"
    )
    parser.add_argument(
        "--compare-strategies", action="store_true", help="also time the alternatives"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "drift_throughput.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    batches = [
        rng.normal(0.0, 1.0, (args.batch, 3, args.size, args.size)).astype(np.float32)
        for _ in range(args.batches)
    ]
    model = build_model(args.size)
    with tempfile.TemporaryDirectory(prefix="bncheck-bench-") as tmp:
        onnx_path = export_onnx(model, args.size, Path(tmp) / "resnet18.onnx")
        results = {
            "benchmark": "drift statistics collection vs plain inference",
            "model": f"ResNet-18 (20 BatchNorm2d, {sum(p.numel() for p in model.parameters())} parameters)",
            "input": [args.batch, 3, args.size, args.size],
            "batches_per_round": args.batches,
            "rounds": args.rounds,
            "required_ratio": REQUIRED_RATIO,
            "machine": {
                "cpus": os.cpu_count(),
                "load_average_1min_at_start": os.getloadavg()[0],
                "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "onnxruntime": ort.__version__,
            },
            "torch_eager": bench_torch(model, batches, args.rounds),
            "onnxruntime": bench_onnx(onnx_path, batches, args.rounds),
        }
        if args.compare_strategies:
            results["alternatives"] = bench_alternatives(model, onnx_path, batches, args.rounds)
    results["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    for key in ("torch_eager", "onnxruntime"):
        results[key]["passed"] = results[key]["moments"]["ratio_vs_plain_median"] >= REQUIRED_RATIO

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"ResNet-18, input {tuple(results['input'])}, {args.rounds} rounds of 6-batch blocks "
        "(plain and runner alternating)"
    )
    print(
        f"{'backend':12s} {'plain samples/s':>16s} {'moments samples/s':>18s} "
        f"{'ratio median':>13s} {'ratio best':>11s}  >= {REQUIRED_RATIO}"
    )
    for key in ("torch_eager", "onnxruntime"):
        r = results[key]
        print(
            f"{key:12s} {r['plain']['samples_per_s_median']:16.1f} "
            f"{r['moments']['samples_per_s_median']:18.1f} "
            f"{r['moments']['ratio_vs_plain_median']:13.3f} {r['moments']['ratio_of_best_times']:11.3f}  "
            f"{'yes' if r['passed'] else 'NO'}"
        )
    if "alternatives" in results:
        for backend, rows in results["alternatives"].items():
            print(
                f"\nalternatives ({backend}): ratio median, ratio best, "
                "worst relative variance error at mean/std=1e3"
            )
            for name, row in rows.items():
                if name != "plain":
                    err = row.get("var_rel_error_at_mean_1e3_std")
                    print(
                        f"  {name:32s} {row['ratio_vs_plain_median']:6.3f} "
                        f"{row['ratio_of_best_times']:6.3f}  {'' if err is None else f'{err:.1e}'}"
                    )
    print(
        f"\nload average {results['machine']['load_average_1min_at_start']:.2f} -> "
        f"{results['machine']['load_average_1min_at_end']:.2f}; {results['wall_seconds']} s; wrote {args.out}"
    )
    return results


if __name__ == "__main__":
    main()
