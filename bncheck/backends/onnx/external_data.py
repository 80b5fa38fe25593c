"""ONNX tensors kept outside the protobuf message: external-data files on disk, and whether
a model in memory still fits in one message (protobuf refuses 2 GiB and more)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from bncheck.backends.onnx.graph import iter_graphs

#: protobuf cannot serialise more than this; larger models go through a temporary file
PROTO_LIMIT = 2**31 - 2**20


def fits_in_one_message(model: onnx.ModelProto) -> bool:
    """Whether ``model`` serialises to less than protobuf's 2 GiB. ``ByteSize()`` costs as much
    as serialising (60 ms for a 45 MB ResNet-18), so it is asked only when the tensor data
    alone comes near the limit; the rest of a model (nodes, names) is small."""
    data = tensor_data_bytes(model)
    if data is not None and data < PROTO_LIMIT // 2:
        return True
    return model.ByteSize() < PROTO_LIMIT


def tensor_data_bytes(model: onnx.ModelProto) -> int | None:
    """Bytes of tensor data held in ``model`` (initializers, sparse initializers and tensor
    attributes such as Constant values, in every graph and local function), from their shapes
    and element types; None when a size cannot be told that way (strings, unknown types)."""
    total = 0
    for tensor in _model_tensors(model):
        n = _stored_bytes(tensor)
        if n is None:
            return None
        total += n
    return total


def uses_external_data(path: Path | None) -> bool:
    """Whether the ONNX file at ``path`` keeps tensors in external files."""
    return any(True for _ in _external_initializers(path))


def external_data_files(path: Path | None) -> list[Path]:
    """The external-data files an ONNX file at ``path`` refers to (to protect them)."""
    files: set[Path] = set()
    for init in _external_initializers(path):
        for entry in init.external_data:
            if entry.key == "location":
                files.add(Path(path).parent / entry.value)
    return sorted(files)


def _external_initializers(path: Path | None) -> Iterator[onnx.TensorProto]:
    """The initializers of every graph of the file at ``path`` whose data is external (none
    when there is no path or the file cannot be read without its data)."""
    if path is None:
        return
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable here: the loader reports it, not this helper
        return
    for _, graph in iter_graphs(model.graph):
        for init in graph.initializer:
            if init.data_location == TensorProto.EXTERNAL:
                yield init


def _stored_bytes(tensor: onnx.TensorProto) -> int | None:
    if tensor.data_location == TensorProto.EXTERNAL:
        return 0  # not stored in the message
    if tensor.data_type == TensorProto.STRING:
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize if len(tensor.dims) else itemsize


def _model_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors: list[onnx.TensorProto] = []
    _graph_tensors(model.graph, tensors)
    for function in model.functions:
        _node_tensors(function.node, tensors)
    return tensors


def _graph_tensors(graph: onnx.GraphProto, into: list[onnx.TensorProto]) -> None:
    into.extend(graph.initializer)
    for sparse in graph.sparse_initializer:
        into.extend((sparse.values, sparse.indices))
    _node_tensors(graph.node, into)


def _node_tensors(nodes, into: list[onnx.TensorProto]) -> None:
    for node in nodes:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                into.append(attr.t)
            elif attr.type == onnx.AttributeProto.TENSORS:
                into.extend(attr.tensors)
            elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                into.extend((attr.sparse_tensor.values, attr.sparse_tensor.indices))
            elif attr.type == onnx.AttributeProto.GRAPH:
                _graph_tensors(attr.g, into)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for graph in attr.graphs:
                    _graph_tensors(graph, into)
