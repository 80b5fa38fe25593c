"""ONNX tensors kept outside the protobuf message: external-data files on disk, and whether
a model in memory still fits in one message (protobuf refuses 2 GiB and more)."""

from __future__ import annotations

import functools
import math
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
    return bool(_external_locations(path))


def external_data_files(path: Path | None) -> list[Path]:
    """The external-data files an ONNX file at ``path`` refers to (to protect them)."""
    return sorted({Path(path).parent / location for location in _external_locations(path) if location})


def _external_locations(path: Path | None) -> tuple[str, ...]:
    """The ``location`` of every external initializer of every graph of the file at ``path``
    (none when there is no path or the file cannot be read without its data). Parsing a file
    costs as much as loading it, and a fold asks three times: the answer is kept per file
    version (path, size, modification time)."""
    if path is None:
        return ()
    try:
        stat = Path(path).stat()
    except OSError:
        return ()
    return _read_locations(str(path), stat.st_size, stat.st_mtime_ns)


#: bytes read at a time by :func:`_may_keep_external_data`
SCAN_BLOCK = 1 << 20
#: how every external-data entry's key serialises: field 1 (``key``, length-delimited), 8 bytes,
#: ``location`` (a file without these bytes keeps no tensor outside itself)
_LOCATION_KEY = b"\x0a\x08location"


def _may_keep_external_data(path: str) -> bool:
    """False when the file's bytes cannot hold an external-data entry, so the file need not be
    parsed here (its loader parses it anyway: 0.1-0.3 s for a 45 MB ResNet-18); True when they
    might, or the file cannot be read (the parse decides). Read in blocks of
    :data:`SCAN_BLOCK` (each searched with the end of the one before, so no entry is missed
    across a boundary): half the time of mapping the file, whose page faults dominate."""
    size = len(_LOCATION_KEY)
    try:
        with open(path, "rb", buffering=0) as handle:
            tail = b""
            while block := handle.read(SCAN_BLOCK):
                if (tail + block[: size - 1]).find(_LOCATION_KEY) >= 0 or block.find(_LOCATION_KEY) >= 0:
                    return True
                tail = block[-(size - 1) :]
    except OSError:
        return True
    return False


@functools.lru_cache(maxsize=8)
def _read_locations(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:
    if not _may_keep_external_data(path):
        return ()
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # unreadable here: the loader reports it, not this helper
        return ()
    locations = []
    for _, graph in iter_graphs(model.graph):
        for init in graph.initializer:
            if init.data_location == TensorProto.EXTERNAL:
                entries = {entry.key: entry.value for entry in init.external_data}
                locations.append(entries.get("location", ""))
    return tuple(locations)


def _stored_bytes(tensor: onnx.TensorProto) -> int | None:
    if tensor.data_location == TensorProto.EXTERNAL:
        return 0  # not stored in the message
    itemsize = _itemsize(tensor.data_type)
    return None if itemsize is None else math.prod(tensor.dims) * itemsize


@functools.lru_cache(maxsize=64)
def _itemsize(data_type: int) -> int | None:
    """Bytes per element of an ONNX element type (None: strings and unknown types). Asked for
    every tensor of a model three times a fold: numpy's dtype lookup, once per type."""
    if data_type == TensorProto.STRING:
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None


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
