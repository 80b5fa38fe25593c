"""Figures the fold report quotes about an ONNX model: stored parameters and nodes."""

from __future__ import annotations

import numpy as np
import onnx

from bncheck.backends.onnx.graph import iter_graphs


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements stored in the model: initializers and Constant-node tensors, every graph."""
    total = 0
    for _, graph in iter_graphs(model.graph):
        total += sum(int(np.prod(i.dims)) if i.dims else 1 for i in graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant":
                total += _constant_elements(node)
    return total


def node_count(model: onnx.ModelProto) -> int:
    """Nodes of the model, every graph and subgraph."""
    return sum(len(g.node) for _, g in iter_graphs(model.graph))


def _constant_elements(node: onnx.NodeProto) -> int:
    total = 0
    for a in node.attribute:
        if a.name == "value":
            total += int(np.prod(a.t.dims)) if a.t.dims else 1
        elif a.name in ("value_floats", "value_ints"):
            total += len(a.floats) + len(a.ints)
    return total
