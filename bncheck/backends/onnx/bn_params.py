"""The four parameters of a BatchNormalization node as per-channel vectors, including those that
exports write as *shape-independent* constant subgraphs.

``torch.onnx.export(dynamo=True, optimize=False)`` writes the scale and bias of a
``BatchNorm(affine=False)`` as ``Expand(CastLike(Constant 1.0, x), Shape(x, 1, 2))``: a uniform
value broadcast to a shape read from the running tensor. Its value does not depend on that
shape, so it is a constant for the BN, and folding it needs no shape at all. Each op that
keeps a uniform value uniform has one registration in :data:`UNIFORM`; nothing is
materialised beyond the per-channel vector (the bounded evaluator of
:class:`~bncheck.backends.onnx.graph.GraphIndex` still computes every real constant).

Ops that read only the *type or shape* of a value (``Shape``, ``Size``, the second input of
``CastLike``) do not make a BN's input "used elsewhere": the BN output has the same type and
shape, so they are moved onto it when the BN is folded (:data:`TYPE_ONLY_READS`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from bncheck.backends.onnx.graph import GraphIndex, op_registry

#: (op type, input position) pairs that read only the type or shape of that input
TYPE_ONLY_READS = {("Shape", 0), ("Size", 0), ("CastLike", 1)}
#: how many uniform-preserving ops are followed back from a BN parameter
MAX_UNIFORM_DEPTH = 8

#: op -> (index, node, depth, fallback dtype) -> the uniform value (a 0-d array) or None
Uniform = Callable[[GraphIndex, onnx.NodeProto, int, np.dtype], np.ndarray | None]
UNIFORM: dict[str, Uniform] = {}
#: ``@uniform(*ops)``: register how ``ops`` keep a uniform value uniform
uniform = op_registry(UNIFORM)


def uniform_value(index: GraphIndex, name: str, dtype: np.dtype, depth: int = 0) -> np.ndarray | None:
    """The one value every element of ``name`` holds, whatever its shape, or None."""
    if not name or depth > MAX_UNIFORM_DEPTH:
        return None
    value = index.constant(name)
    if value is not None:
        flat = np.asarray(value).reshape(-1)
        return flat[0].copy() if flat.size and np.all(flat == flat[0]) else None
    node = index.producer.get(name)
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in UNIFORM:
        return None
    return UNIFORM[node.op_type](index, node, depth, dtype)


@uniform("Expand", "Tile", "Identity")
def _same_values(index: GraphIndex, node: onnx.NodeProto, depth: int, dtype: np.dtype) -> np.ndarray | None:
    """Broadcasting and tiling repeat values (a shape of 0 elements is no value at all)."""
    return uniform_value(index, node.input[0], dtype, depth + 1)


@uniform("ConstantOfShape")
def _constant_of_shape(index: GraphIndex, node: onnx.NodeProto, depth: int, dtype: np.dtype) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            flat = onnx.numpy_helper.to_array(attr.t).reshape(-1)
            return flat[0].copy() if flat.size == 1 else None
    return np.float32(0.0)


@uniform("Cast")
def _cast(index: GraphIndex, node: onnx.NodeProto, depth: int, dtype: np.dtype) -> np.ndarray | None:
    value = uniform_value(index, node.input[0], dtype, depth + 1)
    to = next((int(a.i) for a in node.attribute if a.name == "to"), None)
    if value is None or to is None:
        return None
    return np.asarray(value).astype(helper.tensor_dtype_to_np_dtype(to))


@uniform("CastLike")
def _cast_like(index: GraphIndex, node: onnx.NodeProto, depth: int, dtype: np.dtype) -> np.ndarray | None:
    """The type comes from the second input's declaration, else from the BN's own parameters."""
    value = uniform_value(index, node.input[0], dtype, depth + 1)
    if value is None or len(node.input) < 2:
        return None
    elem = index.elem_type(node.input[1])
    target = helper.tensor_dtype_to_np_dtype(elem) if elem else dtype
    return np.asarray(value).astype(target)


def bn_parameters(index: GraphIndex, bn: onnx.NodeProto) -> list[np.ndarray | None]:
    """scale, B, input_mean, input_var of ``bn``: constants as stored, uniform subgraphs as
    vectors of the channel count the constant ones give (None where neither)."""
    names = (list(bn.input[1:5]) + [""] * 4)[:4]
    values = [index.constant(n) if n else None for n in names]
    known = [np.asarray(v) for v in values if v is not None and np.asarray(v).ndim == 1]
    if not known or all(v is not None for v in values):
        return values
    channels, dtype = int(known[0].size), known[0].dtype
    for i, name in enumerate(names):
        if values[i] is None and name:
            value = uniform_value(index, name, dtype)
            if value is not None:
                values[i] = np.full(channels, value, dtype=np.asarray(value).dtype)
    return values


def value_readers(index: GraphIndex, name: str) -> list[onnx.NodeProto]:
    """The nodes that read the *values* of ``name`` (not only its type or shape)."""
    return [n for n in index.consumers.get(name, []) if not _type_only(n, name)]


def type_readers(index: GraphIndex, name: str) -> list[onnx.NodeProto]:
    """The nodes that read only the type or shape of ``name``."""
    return [n for n in index.consumers.get(name, []) if _type_only(n, name)]


def _type_only(node: onnx.NodeProto, name: str) -> bool:
    positions = [i for i, inp in enumerate(node.input) if inp == name]
    return bool(positions) and all((node.op_type, i) in TYPE_ONLY_READS for i in positions)
