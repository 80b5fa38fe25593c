"""A model handed to onnxruntime with its weights in memory, not serialised.

``InferenceSession(model.SerializeToString())`` copies every weight twice before the session
exists: into the serialised message (a 45 MB ResNet-18: 90 ms) and out of it again as
onnxruntime parses the message (a session from those bytes took 180-270 ms to open, one from
the file 90-110 ms). :func:`light` instead gives the model with each large initializer reduced
to its declaration (marked as external data, whose location is never read) and the
initializers' values as arrays over the protobuf's own bytes; the session gets them with
``SessionOptions.add_external_initializers`` and opens in about the time a session from the file
does (same graph, same optimisations: onnxruntime replaces the declarations by the values before
it resolves the graph). Initializers that are also graph inputs (overridable) and tensors
without raw data or of types numpy cannot hold stay in the message. Initializers no node reads
(the moments graph's BN nodes read a moved running mean instead of the model's own) are left
out: onnxruntime drops them before it takes the external values, and then refuses a value it
no longer has an initializer for.

A runner that opens several sessions of one model (its moments, train and plain graphs, made
again after every :meth:`release`) splits the weights off once (:func:`split_weights`): the
rewritten graphs are copies of the lean model (the declarations), and every session takes the
same arrays (a ResNet-18's deep copy and weight copy cost 60 ms and 90 MB of page faults a
session).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bncheck.backends.onnx.graph import iter_graphs

#: initializers of fewer bytes than this stay in the message (their copy costs nothing)
SMALL_BYTES = 1024
#: declared location of the initializers given in memory (onnxruntime never opens it)
LOCATION = "bncheck-in-memory.bin"
_NOT_NUMPY = {TensorProto.UNDEFINED, TensorProto.STRING, TensorProto.BFLOAT16}


@dataclass
class LightModel:
    """A model's message without its large weights, and those weights by name."""

    data: bytes
    names: list[str]
    arrays: list[np.ndarray]


@dataclass
class Weights:
    """A model with its large top-level initializers reduced to declarations (``lean``), and
    their values by name (read-only arrays, one copy of the protobuf's bytes)."""

    lean: onnx.ModelProto
    arrays: dict[str, np.ndarray]


def split_weights(model: onnx.ModelProto) -> Weights:
    """``model``'s large initializers (not graph inputs) split off as arrays."""
    inputs = {value.name for value in model.graph.input}
    arrays: dict[str, np.ndarray] = {}

    def declared(init: TensorProto) -> TensorProto:
        array = _array(init) if init.name not in inputs else None
        if array is None:
            return init
        arrays[init.name] = array
        return _declaration(init, array.nbytes)

    return Weights(_rebuilt(model, declared), arrays)


def with_weights(model: onnx.ModelProto, weights: Weights | None) -> onnx.ModelProto:
    """``model`` with the declarations of ``weights`` holding their values again (a message
    onnxruntime can read whole)."""
    if weights is None:
        return model

    def restored(init: TensorProto) -> TensorProto:
        if _is_declaration(init) and init.name in weights.arrays:
            return numpy_helper.from_array(np.asarray(weights.arrays[init.name]), init.name)
        return init

    return _rebuilt(model, restored)


def _rebuilt(model: onnx.ModelProto, initializer: Callable[[TensorProto], TensorProto | None]) -> onnx.ModelProto:
    """A copy of ``model`` whose top-level initializers are ``initializer(init)`` (None: left out)."""
    graph = onnx.GraphProto()
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _copy_field(graph, field, value)
    for init in model.graph.initializer:
        made = initializer(init)
        if made is not None:
            graph.initializer.append(made)
    out = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(out, field, value)
    out.graph.CopyFrom(graph)
    return out


def light(model: onnx.ModelProto, weights: Weights | None = None) -> LightModel:
    """``model`` serialised with its large top-level initializers declared as external data,
    and their values (read-only arrays sharing the protobuf's bytes); declarations of
    ``weights`` take its arrays."""
    graph = model.graph
    inputs = {value.name for value in graph.input}
    read = _read_names(graph)
    names, arrays = [], []

    def declared(init: TensorProto) -> TensorProto | None:
        if init.name not in read and init.name not in inputs:
            return None  # unused: onnxruntime would drop it, then refuse its value
        if weights is not None and _is_declaration(init) and init.name in weights.arrays:
            array, kept = weights.arrays[init.name], init
        else:
            array = _array(init) if init.name not in inputs else None
            if array is None:
                return init
            kept = _declaration(init, array.nbytes)
        names.append(init.name)
        arrays.append(array)
        return kept

    data = _rebuilt(model, declared).SerializeToString()
    return LightModel(data, names, arrays)


def _is_declaration(init: TensorProto) -> bool:
    return init.data_location == TensorProto.EXTERNAL and any(e.key == "location" and e.value == LOCATION for e in init.external_data)


def _read_names(graph: onnx.GraphProto) -> set[str]:
    """Every value a node of ``graph`` or of its subgraphs reads, and the graph's outputs."""
    read = {value.name for value in graph.output}
    for _, sub in iter_graphs(graph):
        for node in sub.node:
            read.update(node.input)
    return read


def _copy_field(target, field, value) -> None:
    repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
    if repeated:
        getattr(target, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        getattr(target, field.name).CopyFrom(value)
    else:
        setattr(target, field.name, value)


def _array(init: TensorProto) -> np.ndarray | None:
    """The initializer's values over its raw bytes (no copy beyond protobuf's own), or None
    where it stays in the message."""
    if init.data_location == TensorProto.EXTERNAL or init.data_type in _NOT_NUMPY or len(init.raw_data) < SMALL_BYTES:
        return None
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
    except (KeyError, TypeError, ValueError):
        return None
    raw = init.raw_data
    shape = tuple(int(d) for d in init.dims)
    if dtype.kind not in "biufc" or dtype.itemsize * int(np.prod(shape, dtype=np.int64)) != len(raw):
        return None  # packed sub-byte types, or a tensor whose bytes do not match its shape
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def _declaration(init: TensorProto, nbytes: int) -> TensorProto:
    declared = TensorProto(name=init.name, data_type=init.data_type, dims=init.dims, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", LOCATION), ("offset", "0"), ("length", str(nbytes))):
        entry = declared.external_data.add()
        entry.key, entry.value = key, value
    return declared


def open_light(model: onnx.ModelProto, options, providers: list, weights: Weights | None = None):
    """An ``onnxruntime.InferenceSession`` of ``model`` with its weights given in memory (those
    of ``weights`` for its declarations); the session keeps the arrays (and their OrtValues)
    alive as long as it lives."""
    import onnxruntime as ort

    parts = light(model, weights)
    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in parts.arrays]
    if parts.names:
        options.add_external_initializers(parts.names, values)
    session = ort.InferenceSession(parts.data, options, providers=providers)
    session._bncheck_weights = (parts.arrays, values)  # onnxruntime reads them in place
    return session
