"""CNN stems: a layer followed only by [Relu ->] MaxPool gets its MaxPool on the shifted input
``D`` *before* the BN and Relu in the one-pass moments graph, which then work on a tensor
``kernel`` times smaller. For a positive BN scale ``a``, ``maxpool(relu(a x + b)) =
relu(a maxpool(x) + b)`` exactly (the same float operations on the same selected element), and
``D`` is multiplied by -1 in the channels whose scale is negative (a Mul that onnxruntime folds
into the Conv, like the shift)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from bncheck.backends.onnx.bn_nodes import BnGraph
from bncheck.layer import BNLayer


@dataclass(frozen=True)
class PoolFirst:
    """A layer whose one-pass graph max-pools the shifted input before the BN (and Relu)."""

    #: indices of the nodes the rewrite replaces: (Relu, MaxPool) or (MaxPool,)
    replaced: tuple[int, ...]
    #: +1 / -1 per channel: the sign of the BN scale factor, applied to D
    signs: np.ndarray
    #: the BN scale times ``signs`` (float32), for the BN on the pooled tensor
    signed_scale: np.ndarray


def find_pool_first(graph: BnGraph, layers: list[BNLayer]) -> dict[str, PoolFirst]:
    """Of ``layers`` (those on the one-pass form), the ones whose BN output feeds only a Relu
    that feeds only a MaxPool (or feeds only a MaxPool), none of them a graph output, in
    inference mode, with a float32 constant scale and finite scale factors."""
    users = _SoleUsers(graph.model.graph)
    result: dict[str, PoolFirst] = {}
    for layer in layers:
        node = graph.node(layer.name)
        training = any(a.name == "training_mode" and a.i for a in node.attribute)
        if training or any(o for o in node.output[1:]):
            continue  # a training-mode node normalises with the batch it sees: not poolable
        replaced = users.relu_pool(node.output[0])
        if replaced is None or graph.constant_type(node.input[1]) != TensorProto.FLOAT:
            continue
        signs = _scale_signs(layer, graph.channels[layer.name])
        if signs is not None:
            signed_scale = (np.asarray(layer.weight, np.float64).reshape(-1) * signs).astype(np.float32)
            result[layer.name] = PoolFirst(replaced, signs, signed_scale)
    return result


class _SoleUsers:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.users: dict[str, list[int]] = {}
        for index, node in enumerate(graph.node):
            for value in node.input:
                self.users.setdefault(value, []).append(index)
        self.graph_outputs = {o.name for o in graph.output}

    def of(self, value: str, op: str) -> int | None:
        """The index of the one node reading ``value`` when it is an ``op`` and ``value`` is
        not a graph output."""
        found = self.users.get(value, [])
        if len(found) != 1 or value in self.graph_outputs:
            return None
        user = self.graph.node[found[0]]
        return found[0] if user.op_type == op and user.domain in ("", "ai.onnx") else None

    def relu_pool(self, value: str) -> tuple[int, ...] | None:
        """(Relu, MaxPool) or (MaxPool,) indices when ``value`` feeds only such a chain."""
        relu = self.of(value, "Relu")
        pool = self.of(self.graph.node[relu].output[0] if relu is not None else value, "MaxPool")
        if pool is None or len([o for o in self.graph.node[pool].output if o]) != 1:
            return None
        return (relu, pool) if relu is not None else (pool,)


def _scale_signs(layer: BNLayer, channels: int) -> np.ndarray | None:
    """+1 / -1 per channel: the sign of ``gamma / sqrt(var + eps)``; None when a factor is not
    finite or the layer lacks a scale or running variance."""
    if layer.running_var is None or layer.weight is None:
        return None
    gamma = np.asarray(layer.weight, np.float64).reshape(-1)
    factor = gamma / np.sqrt(np.asarray(layer.running_var, np.float64).reshape(-1) + (layer.eps or 0.0))
    if gamma.size != channels or not np.all(np.isfinite(factor)):
        return None
    return np.where(factor < 0, -1.0, 1.0).astype(np.float32)
