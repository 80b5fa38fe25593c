"""Copies of an ONNX model with other running statistics (what ``recalibrate`` writes and
its refinement passes run)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bncheck.backends.interface import Statistics, check_shapes
from bncheck.backends.onnx.graph import GraphIndex
from bncheck.backends.onnx.source import OnnxSource
from bncheck.errors import UsageError


def with_statistics(source: OnnxSource, stats: Statistics) -> OnnxSource:
    """A copy of ``source`` whose BN nodes named in ``stats`` read those running statistics."""
    model = onnx.ModelProto()
    model.CopyFrom(source.model)
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes = {(node.name or node.output[0]): node for node in graph.node if node.op_type == "BatchNormalization"}
    layers = {layer.name: layer for layer in source.bn_layers()}
    taken = set(inits) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    for name, (mean, var) in stats.items():
        node = nodes.get(name)
        if node is None:
            raise UsageError(f"BN layer {name} is not a BatchNormalization node of the main graph; it cannot be rewritten.")
        check_shapes(name, mean, var, layers[name].num_features)
        for slot, values in ((3, mean), (4, var)):
            current = node.input[slot]
            dtype = _onnx_dtype(current, inits, source)
            array = np.asarray(values, dtype=np.float64).astype(dtype)
            init = inits.get(current)
            if init is not None and uses.get(current, 0) == 1:
                init.CopyFrom(numpy_helper.from_array(array, current))
                continue
            # shared or computed (Constant / Cast chains): give this node its own initializer
            fresh = _unique(f"{name}.{'running_mean' if slot == 3 else 'running_var'}", taken)
            taken.add(fresh)
            graph.initializer.append(numpy_helper.from_array(array, fresh))
            node.input[slot] = fresh
    _prune_dead_constants(graph)
    clone = OnnxSource(model, path=source.path)
    return clone


def _onnx_dtype(name: str, inits, source) -> np.dtype:
    if name in inits:
        return np.dtype(helper.tensor_dtype_to_np_dtype(inits[name].data_type))
    # a computed parameter (Constant / Cast chain): keep the dtype the BN node receives
    value = GraphIndex(source.model.graph, source.opset).constant(name)
    return np.dtype(value.dtype) if value is not None else np.dtype(np.float32)


def _unique(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _prune_dead_constants(graph) -> None:
    """Drop Constant/Cast/... nodes and initializers nothing consumes any more."""
    outputs = {o.name for o in graph.output}
    changed = True
    while changed:
        changed = False
        used = outputs | {i for n in graph.node for i in n.input}
        for node in list(graph.node):
            if node.op_type in ("Constant", "Cast", "Identity", "Expand", "Reshape", "Unsqueeze", "Squeeze", "CastLike"):
                if not any(o in used for o in node.output):
                    graph.node.remove(node)
                    changed = True
        used = outputs | {i for n in graph.node for i in n.input}
        for init in list(graph.initializer):
            if init.name not in used:
                graph.initializer.remove(init)
                changed = True
