"""The BatchNormalization nodes of an ONNX model's main graph as the runner's graph builders
see them: where each layer's node sits, the types of the values around it, which layers cannot
be observed, and the first shift of each layer's one-pass moments."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from bncheck.layer import BNLayer

SUBGRAPH_REASON = "inside a control-flow subgraph (If/Loop/Scan body), whose values cannot be graph outputs"
SPATIAL_REASON = "spatial=0 (per-activation statistics), not per-channel"


@dataclass(frozen=True)
class BnGraph:
    """The model, its opset, value types and the index of every BN layer's node."""

    model: onnx.ModelProto
    opset: int
    #: value name -> (ONNX element type, rank or None), from shape inference
    types: dict[str, tuple[int, int | None]]
    #: initializer name -> ONNX element type
    init_types: dict[str, int]
    #: layer name -> index of its BatchNormalization node in the main graph
    nodes: dict[str, int]
    #: layer name -> number of channels, for every BN layer of the source
    channels: dict[str, int]

    @classmethod
    def of(cls, source, layers: list[BNLayer]) -> BnGraph:
        """The facts of an ``OnnxSource`` whose BN layers are ``layers``."""
        model = source.model
        return cls(
            model=model,
            opset=source.opset,
            types=source.value_types(),
            init_types={i.name: i.data_type for i in model.graph.initializer},
            nodes=bn_node_indices(model.graph),
            channels={layer.name: int(layer.num_features) for layer in layers},
        )

    def node(self, layer: str) -> onnx.NodeProto:
        """The BatchNormalization node of ``layer``."""
        return self.model.graph.node[self.nodes[layer]]

    def value_type(self, value: str) -> tuple[int, int | None]:
        """(element type, rank) of ``value``; UNDEFINED and None where inference cannot tell."""
        return self.types.get(value, (TensorProto.UNDEFINED, None))

    def constant_type(self, value: str) -> int:
        """The element type of an initializer (or of an inferred value) named ``value``."""
        return self.init_types.get(value) or self.types.get(value, (0,))[0]


def bn_node_indices(graph: onnx.GraphProto) -> dict[str, int]:
    """Layer name (node name, else its first output) -> index of the BatchNormalization node."""
    nodes: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
            nodes.setdefault(node.name or node.output[0], index)
    return nodes


def unobservable(layers: list[BNLayer], graph: BnGraph) -> dict[str, str]:
    """Layers whose input the runner cannot observe (nor rewrite in train passes) -> why."""
    reasons: dict[str, str] = {}
    for layer in layers:
        index = graph.nodes.get(layer.name)
        if index is None:
            reasons[layer.name] = SUBGRAPH_REASON
        elif any(a.name == "spatial" and a.i == 0 for a in graph.model.graph.node[index].attribute):
            reasons[layer.name] = SPATIAL_REASON
    return reasons


def first_shift(graph: BnGraph, layer: BNLayer) -> np.ndarray | None:
    """The running mean as the first shift of ``layer``'s one-pass moments, or None when the
    layer needs the two-pass form (not float32, rank < 3 or unknown, no constant running
    mean of float32 type)."""
    node = graph.node(layer.name)
    elem, rank = graph.value_type(node.input[0])
    if elem != TensorProto.FLOAT or rank is None or rank < 3 or len(node.input) < 5:
        return None
    if graph.constant_type(node.input[3]) != TensorProto.FLOAT or layer.running_mean is None:
        return None
    shift = np.asarray(layer.running_mean, np.float32).reshape(-1)
    if shift.size != graph.channels[layer.name]:
        return None
    return np.where(np.isfinite(shift), shift, np.float32(0))


def finite_statistics(layers: list[BNLayer]) -> set[str]:
    """Layers whose running statistics are finite (the native training-mode node needs them)."""
    return {
        layer.name
        for layer in layers
        if all(v is not None and np.all(np.isfinite(v)) for v in (layer.running_mean, layer.running_var))
    }


def running_means(layers: list[BNLayer]) -> dict[str, np.ndarray]:
    """Layer -> its running mean as float64, for the layers that have one."""
    return {
        layer.name: np.asarray(layer.running_mean, np.float64).reshape(-1)
        for layer in layers
        if layer.running_mean is not None
    }
