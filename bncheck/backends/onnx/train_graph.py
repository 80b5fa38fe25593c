"""The *train* graph: a copy of the model in which every BatchNormalization normalises with the
statistics of the batch. From opset 14 a float32 node becomes the same node with
``training_mode=1, momentum=0``, whose extra outputs are then exactly the batch mean and
population variance (onnxruntime's kernel, about 15% faster than the composition below); older
opsets and other types get batch-statistics normalisation written with standard ops::

    X3 = Reshape(X, [0, 0, -1]);  mean = ReduceMean(X3, axes=[0, 2])
    D = X3 - mean;  var = ReduceMean(D * D, axes=[0, 2])
    Y = Reshape(D / Sqrt(var + eps) * scale + B, Shape(X))

Either way ``mean``, ``var`` and ``Size(X)`` of every rewritten layer are graph outputs too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bncheck.backends.onnx.bn_nodes import BnGraph
from bncheck.backends.onnx.naming import NameMaker
from bncheck.backends.onnx.ops import reduce_mean


@dataclass(frozen=True)
class TrainGraph:
    """The rewritten model and, per rewritten layer, its (mean, var, size) outputs."""

    model: onnx.ModelProto
    outputs: dict[str, tuple[str, str, str]]


def build_train_graph(
    graph: BnGraph, rewritten: list[str], finite: set[str], names: NameMaker, base: onnx.ModelProto | None = None
) -> TrainGraph:
    """A copy of ``graph.model`` (or of ``base``, the same model with its weights declared
    only) whose ``rewritten`` layers use batch statistics; ``finite``: the layers whose running
    statistics are finite (see :func:`native_training`)."""
    model = copy.deepcopy(graph.model if base is None else base)
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {o.name for o in model.graph.output}
    nodes: list[onnx.NodeProto] = []
    new_outputs, new_inits, layer_outputs = [], [], {}
    targets = {graph.nodes[name]: name for name in rewritten}
    for index, node in enumerate(graph.model.graph.node):  # the untouched original
        name = targets.get(index)
        if name is None:
            nodes.append(node)
            continue
        prefix = names.prefix(name + "/train")
        elem = graph.value_type(node.input[0])[0]
        extra_used = any(o and (consumers.get(o) or o in graph_outputs) for o in node.output[1:])
        if not extra_used and native_training(graph, node, elem, name in finite):
            layer_nodes, mean, var, size = training_mode_nodes(node, prefix)
        else:
            layer_nodes, mean, var, size = batch_norm_nodes(graph.opset, node, elem, prefix, new_inits)
        if extra_used:  # keep the original node for its other outputs; Y comes from the rewrite
            kept = copy.deepcopy(node)
            kept.output[0] = prefix + "unused_y"
            nodes.append(kept)
        nodes.extend(layer_nodes)
        layer_outputs[name] = (mean, var, size)
        out_type = elem if elem != TensorProto.UNDEFINED else TensorProto.FLOAT
        new_outputs += [
            helper.make_tensor_value_info(mean, out_type, None),
            helper.make_tensor_value_info(var, out_type, None),
            helper.make_tensor_value_info(size, TensorProto.INT64, None),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(new_inits)
    model.graph.output.extend(new_outputs)
    return TrainGraph(model, layer_outputs)


def native_training(graph: BnGraph, node: onnx.NodeProto, elem: int, finite: bool) -> bool:
    """Whether onnxruntime's own training-mode kernel can stand in for ``node``: opset 14+
    (the ``training_mode`` attribute), float32 input and statistics, and finite running
    statistics (``momentum=0`` multiplies them by 0)."""
    if graph.opset < 14 or elem != TensorProto.FLOAT or not finite:
        return False
    return {graph.constant_type(n) for n in node.input[3:5]} == {TensorProto.FLOAT}


def training_mode_nodes(node: onnx.NodeProto, prefix: str):
    """``node`` in training mode with ``momentum=0``: its running-statistics outputs are then the
    batch mean and population variance it normalises with. Returns (nodes, mean, var, size)."""
    bn = copy.deepcopy(node)
    for attribute in [a for a in bn.attribute if a.name in ("training_mode", "momentum")]:
        bn.attribute.remove(attribute)
    bn.attribute.extend([helper.make_attribute("training_mode", 1), helper.make_attribute("momentum", 0.0)])
    del bn.output[1:]
    mean, var, size = prefix + "mean", prefix + "var", prefix + "size"
    bn.output.extend([mean, var])
    return [bn, helper.make_node("Size", [node.input[0]], [size])], mean, var, size


def batch_norm_nodes(opset: int, node: onnx.NodeProto, elem: int, prefix: str, inits: list):
    """Nodes computing Y of ``node`` with batch statistics; returns (nodes, mean, var, size)."""
    x, scale, bias = node.input[0], node.input[1], node.input[2]
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    np_type = helper.tensor_dtype_to_np_dtype(elem) if elem != TensorProto.UNDEFINED else np.float32
    p = prefix
    inits += [
        numpy_helper.from_array(np.array([0, 0, -1], np.int64), p + "shape3"),
        numpy_helper.from_array(np.array([1, -1, 1], np.int64), p + "shape_c"),
        numpy_helper.from_array(np.array(eps, dtype=np_type), p + "eps"),
    ]
    mean, var = p + "mean", p + "var"
    nodes = [helper.make_node("Reshape", [x, p + "shape3"], [p + "x3"])]
    nodes += reduce_mean(opset, p + "x3", mean, (0, 2), inits)
    nodes += [
        helper.make_node("Sub", [p + "x3", mean], [p + "dev"]),
        helper.make_node("Mul", [p + "dev", p + "dev"], [p + "dev2"]),
    ]
    nodes += reduce_mean(opset, p + "dev2", var, (0, 2), inits)
    nodes += [
        helper.make_node("Add", [var, p + "eps"], [p + "var_eps"]),
        helper.make_node("Sqrt", [p + "var_eps"], [p + "std"]),
        helper.make_node("Div", [p + "dev", p + "std"], [p + "xhat"]),
        helper.make_node("Reshape", [scale, p + "shape_c"], [p + "scale3"]),
        helper.make_node("Reshape", [bias, p + "shape_c"], [p + "bias3"]),
        helper.make_node("Mul", [p + "xhat", p + "scale3"], [p + "scaled"]),
        helper.make_node("Add", [p + "scaled", p + "bias3"], [p + "y3"]),
        helper.make_node("Shape", [x], [p + "xshape"]),
        helper.make_node("Reshape", [p + "y3", p + "xshape"], [node.output[0]]),
        helper.make_node("Size", [x], [p + "size"]),
    ]
    return nodes, mean, var, p + "size"
