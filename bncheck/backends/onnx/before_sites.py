"""Whether a BatchNormalization can fold into the ops *reading* its output (``x -> BN -> Conv``:
a BN on a graph input, after a pooling or an activation): the structural checks shared by the
inventory (:mod:`~bncheck.backends.onnx.source`, for ``foldable``) and the rewrite
(:mod:`~bncheck.backends.onnx.fold_before`). Reads the graph only; no values are computed.

Every reader of the BN output must be a Conv, a Gemm (``transA=0``) or a MatMul on a 2-D
``(N, C)`` input, reading it as its data input, with a constant weight of its own; the output
must not be a graph output nor be read inside an If/Loop/Scan body. A Conv that pads its input
absorbs the BN only when the BN shift is all zero (the padded border reads ``BN(0) = shift``
otherwise).
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import helper

from bncheck.backends.onnx.bn_params import value_readers
from bncheck.backends.onnx.graph import GraphIndex, iter_graphs

#: the op types a BN folds into when it feeds them
CONSUMER_OPS = ("Conv", "Gemm", "MatMul")
#: what a BN before a padded Conv is kept with
PADDED_REASON = "BN before a padded Conv: folding would change the border"
#: how the inventory's ``fold_reason`` starts for a BN that folds only into what follows it
CONSUMER_REASON = "into the following "
#: Ops that read only the shape of their input (as in :mod:`~bncheck.backends.onnx.source`).
_SHAPE_ONLY = ("Shape", "Size")


def feeds_consumers(index: GraphIndex, bn: onnx.NodeProto) -> bool:
    """Whether any reader of the BN output is a Conv/Gemm/MatMul (worth trying the fold)."""
    return any(n.op_type in CONSUMER_OPS for n in value_readers(index, bn.output[0]))


def into_consumers(layer) -> bool:
    """Whether the inventory found ``layer`` foldable into its consumers only (not its producer)."""
    return bool(layer.foldable) and layer.fold_reason.startswith(CONSUMER_REASON)


def label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} {node.name or node.output[0]}"


def consumer_blocker(index: GraphIndex, bn: onnx.NodeProto, *, shift_is_zero: bool,
                     rank_of: Callable[[str], int | None]) -> str | None:
    """Why ``bn`` cannot fold into the ops reading its output (None: it can)."""
    y = bn.output[0]
    if y in index.graph_outputs:
        return f"its output ({y}) is also a graph output"
    readers = value_readers(index, y)
    if not readers:
        return "nothing reads its output"
    for node in readers:
        why = _reader_blocker(index, node, y, bn.input[0], shift_is_zero, rank_of)
        if why is not None:
            return why
    if y in _read_by_bodies(index.graph):  # last: it walks the whole graph
        return f"its output ({y}) is read inside an If/Loop/Scan body"
    return None


def _reader_blocker(index: GraphIndex, node: onnx.NodeProto, y: str, x: str, shift_is_zero: bool, rank_of) -> str | None:
    what = label(node)
    if node.op_type not in CONSUMER_OPS or node.domain not in ("", "ai.onnx"):
        return f"its output feeds {what}, not only Conv/Gemm/MatMul ops"
    if [i for i, name in enumerate(node.input) if name == y] != [0]:
        return f"{what} reads its output as a parameter, not as its data input"
    if len(node.input) < 2 or not index.is_constant(node.input[1]):
        return f"the weight of {what} is not a constant"
    users = [u for u in index.consumers.get(node.input[1], []) if u is not node and u.op_type not in _SHAPE_ONLY]
    if users:
        return f"the weight of {what} is shared with {users[0].name or users[0].op_type}"
    if node.op_type == "Conv":
        shape = index.constant_shape(node.input[1])
        if len(node.input) > 2 and node.input[2] and not index.is_constant(node.input[2]):
            return f"the bias of {what} is not a constant"
        if shape is None or len(shape) < 3:
            return f"the weight of {what} has no conv shape"
        if conv_padded(node, tuple(shape[2:])) and not shift_is_zero:
            return f"{PADDED_REASON} ({what} zero-pads its input and the BN shift is not zero)"
    elif node.op_type == "Gemm":
        if attribute(node, "transA", 0):
            return f"{what} has transA=1: the BN channels are not its input features"
        if len(node.input) > 2 and node.input[2] and not index.is_constant(node.input[2]):
            return f"the bias C of {what} is not a constant"
    else:
        rank = rank_of(x)
        if rank != 2:
            why = "of unknown rank (shape inference did not say)" if rank is None else f"{rank}-D"
            return f"its input is {why}, so its channels are not known to be the features {what} multiplies"
    return None


def conv_padded(node: onnx.NodeProto, kernel: tuple[int, ...]) -> bool:
    """Whether the Conv ``node`` (kernel ``kernel``) pads its input."""
    auto_pad = attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad == "VALID":
        return False
    if auto_pad.startswith("SAME"):
        return any(int(k) != 1 for k in kernel)  # SAME with a 1-wide kernel never pads
    return any(int(p) != 0 for p in attribute(node, "pads", []))


def attribute(node: onnx.NodeProto, name: str, default):
    """The value of attribute ``name`` of ``node``, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _read_by_bodies(graph: onnx.GraphProto) -> set[str]:
    return {i for path, g in iter_graphs(graph) if path for n in g.node for i in n.input}
