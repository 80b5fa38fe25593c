"""Multiply-adds of an ONNX graph at a concrete input shape: the weighted ops (Conv,
ConvTranspose, MatMul, Gemm and their quantised forms) counted from the shapes that shape
inference gives at that input, the cost measure BN103's diagnosis uses to keep its re-measured
layers near the input (``Backend.cut_cost``). None where some weighted op's shapes are unknown."""

from __future__ import annotations

import math

import onnx

from bncheck.backends.onnx.graph import static_dims
from bncheck.backends.onnx.truncate import truncated_model

_CONV = {"Conv", "ConvInteger", "QLinearConv"}
_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "FusedMatMul"}
#: the input of each quantised op whose shape holds the weights (the others read input 1)
_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3}


def multiply_adds(model: onnx.ModelProto, input_dims: tuple[int, ...], *, known_only: bool = False) -> int | None:
    """Multiply-adds of one run of the main graph of ``model`` (a single input of shape
    ``input_dims``), or None when the graph has several inputs or a weighted op's shapes
    cannot be inferred (``known_only``: those ops count zero, a lower bound)."""
    inits = {init.name for init in model.graph.initializer}
    inputs = [vi.name for vi in model.graph.input if vi.name not in inits]
    if len(inputs) != 1:
        return None
    dims = static_dims(model, inputs[0], input_dims)
    dims.update({init.name: tuple(int(d) for d in init.dims) for init in model.graph.initializer})
    total = 0
    for node in model.graph.node:
        op = node.op_type
        if op not in _CONV and op not in _MATMUL and op != "ConvTranspose":
            continue
        count = _node_cost(node, dims)
        if count is None and not known_only:
            return None
        total += count or 0
    return total


def _node_cost(node: onnx.NodeProto, dims: dict) -> int | None:
    op = node.op_type
    out = dims.get(node.output[0])
    weight = dims.get(node.input[_WEIGHT_INPUT.get(op, 1)]) if len(node.input) > 1 else None
    if out is None or weight is None or any(d is None for d in (*out, *weight)) or not weight:
        return None
    if op in _CONV:  # each output element: (C_in / group) * kernel products
        return math.prod(out) * math.prod(weight[1:])
    if op == "ConvTranspose":  # each input element spreads over (C_out / group) * kernel outputs
        source = dims.get(node.input[0])
        if source is None or any(d is None for d in source):
            return None
        return math.prod(source) * math.prod(weight[1:])
    a = dims.get(node.input[0])  # MatMul / Gemm: each output element is a dot over K
    if a is None or not a or a[-1] is None:
        return None
    transposed = op == "Gemm" and any(attr.name == "transA" and attr.i for attr in node.attribute)
    k = a[0] if transposed else a[-1]
    return math.prod(out) * int(k)


def cut_cost(model: onnx.ModelProto, layers: list[str], input_dims: tuple[int, ...]) -> tuple[int, int] | None:
    """Multiply-adds of one run of the graph cut after the BN ``layers``
    (:func:`~bncheck.backends.onnx.truncate.truncated_model`) and of the whole ``model``, or
    None where the cut's own count is unknown. Ops of the rest whose shapes inference cannot
    follow (an attention block's reshapes) count zero: the whole is then a lower bound."""
    part = multiply_adds(truncated_model(model, layers), input_dims)
    if part is None:
        return None
    whole = multiply_adds(model, input_dims, known_only=True)
    return part, max(int(whole or 0), part)
