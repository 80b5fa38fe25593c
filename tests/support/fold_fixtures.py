"""Fixtures for the fold tests: BN statistics that are not the defaults, ONNX exports that
keep their BN nodes, onnxruntime references and graph checks. Handed out as fixtures so that
test modules never import this file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest


def _randomize_bn(model, seed: int = 0, *, zero_var_channel: bool = False):
    """Give every BN layer of ``model`` non-trivial statistics and affine parameters (in place),
    put it in eval mode and return it."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm) or (hasattr(m, "running_mean") and hasattr(m, "running_var")):
                c = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                if zero_var_channel:
                    m.running_var[0] = 0.0
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.3)
    return model.eval()


@pytest.fixture
def randomize_bn():
    """``randomize_bn(model, seed=0, zero_var_channel=False) -> model`` (eval mode)."""
    pytest.importorskip("torch")
    return _randomize_bn


def export_keeping_bn(model, example, path: Path, *, opset: int = 17, dynamo: bool = False, optimize: bool = True) -> Path:
    """ONNX export that keeps BN nodes: the legacy exporter without constant folding and with
    TrainingMode.PRESERVE, or the dynamo exporter (``optimize=False`` keeps BN too)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (example,), str(path), dynamo=True, optimize=optimize, opset_version=opset)
        else:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=opset,
                do_constant_folding=False,
                training=torch.onnx.TrainingMode.PRESERVE,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            )
    return Path(path)


@pytest.fixture
def export_onnx():
    """``export_onnx(model, example, path, opset=17, dynamo=False, optimize=True) -> path``."""
    pytest.importorskip("torch")
    return export_keeping_bn


def _ort(model, *inputs: np.ndarray) -> list[np.ndarray]:
    """Outputs of onnxruntime (no graph optimisations) for a path or a ModelProto."""
    import onnx
    import onnxruntime as ort

    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs, strict=True)))


@pytest.fixture
def ort_run():
    """``ort_run(path_or_model, *inputs) -> list of outputs`` (onnxruntime, unoptimised)."""
    return _ort


def _bn_patterns(model) -> dict[str, int]:
    """BN nodes in total and BN nodes fed by a Conv/ConvTranspose/Gemm that feeds only them."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    bn = [n for n in graph.node if n.op_type == "BatchNormalization"]
    foldable = [
        n
        for n in bn
        if n.input[0] in producer
        and producer[n.input[0]].op_type in ("Conv", "ConvTranspose", "Gemm")
        and consumers.get(n.input[0]) == 1
    ]
    return {"bn": len(bn), "bn_after_producer": len(foldable)}


@pytest.fixture
def bn_patterns():
    """``bn_patterns(path_or_model) -> {"bn": n, "bn_after_producer": m}``."""
    return _bn_patterns
