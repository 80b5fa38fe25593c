"""Multiply-adds of an ONNX graph at a concrete input shape: the weighted ops (Conv,
ConvTranspose, MatMul, Gemm and their quantised forms) counted from the shapes that shape
inference gives at that input, the cost measure BN103's diagnosis uses to keep its re-measured
layers near the input (``Backend.cut_cost``). None where some weighted op's shapes are unknown."""

from __future__ import annotations

import math

import onnx

from bncheck.backends.onnx.graph import static_dims
from bncheck.backends.onnx.truncate import kept_nodes

_CONV = {"Conv", "ConvInteger", "QLinearConv"}
_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm", "FusedMatMul"}
#: the input of each quantised op whose shape holds the weights (the others read input 1)
_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3}


def node_costs(model: onnx.ModelProto, input_dims: tuple[int, ...]) -> dict[int, int | None] | None:
    """Multiply-adds of each weighted node of the main graph of ``model`` (by index; None where
    its shapes cannot be inferred) for one run at the single input shape ``input_dims``; None
    when the graph has several inputs."""
    inits = {init.name for init in model.graph.initializer}
    inputs = [vi.name for vi in model.graph.input if vi.name not in inits]
    if len(inputs) != 1:
        return None
    dims = static_dims(model, inputs[0], input_dims)
    dims.update({init.name: tuple(int(d) for d in init.dims) for init in model.graph.initializer})
    weighted = _CONV | _MATMUL | {"ConvTranspose"}
    return {i: _node_cost(node, dims) for i, node in enumerate(model.graph.node) if node.op_type in weighted}


def multiply_adds(model: onnx.ModelProto, input_dims: tuple[int, ...]) -> int | None:
    """Multiply-adds of one run of the main graph of ``model`` (a single input of shape
    ``input_dims``), or None when the graph has several inputs or a weighted op's shapes
    cannot be inferred."""
    costs = node_costs(model, input_dims)
    if costs is None or any(c is None for c in costs.values()):
        return None
    return sum(costs.values())


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
    """Multiply-adds of one run of the graph cut after the BN ``layers`` (the nodes
    :func:`~bncheck.backends.onnx.truncate.truncated_model` keeps) and of the whole ``model``,
    from one shape inference of the whole; None where the cut's own count is unknown. Ops of
    the rest whose shapes inference cannot follow (an attention block's reshapes) count zero:
    the whole is then a lower bound."""
    costs = node_costs(model, input_dims)
    if costs is None:
        return None
    _, keep, _ = kept_nodes(model.graph, layers)
    cut = [costs[i] for i in keep if i in costs]
    if any(c is None for c in cut):
        return None
    return sum(cut), sum(c or 0 for c in costs.values())
