"""Reading an ONNX graph: tensors that are constant (initializers or constant subgraphs),
who produces and who consumes each value. Shared by the ONNX inventory and the fold rewrite."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import onnx
from onnx import numpy_helper

from bncheck.backends.onnx import limits

#: Ops that only move or convert constants; a chain of them over constants is a constant.
MAX_CONSTANT_DEPTH = 32


_F = TypeVar("_F", bound=Callable)


def op_registry(table: dict[str, _F]) -> Callable[..., Callable[[_F], _F]]:
    """A decorator factory that files a function in ``table`` under each op type it is given:
    ``deco = op_registry(TABLE)``, then ``@deco("Conv", "ConvTranspose")`` above a function."""

    def for_ops(*op_types: str) -> Callable[[_F], _F]:
        def register(fn: _F) -> _F:
            for op in op_types:
                table[op] = fn
            return fn

        return register

    return for_ops


#: the standard ops that hold graphs (attributes of type GRAPH); ops of other domains are looked into
_WITH_SUBGRAPHS = frozenset({"If", "Loop", "Scan", "SequenceMap"})
_STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})


def iter_graphs(graph: onnx.GraphProto, path: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graph and every subgraph (If/Loop/Scan bodies), with a readable path."""
    yield path, graph
    for node in graph.node:
        if node.domain in _STANDARD_DOMAINS and node.op_type not in _WITH_SUBGRAPHS:
            continue  # no other standard op has a graph attribute (reading every attribute's type costs)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g, f"{path}{node.name or node.op_type}/{attr.name}/")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for i, sub in enumerate(attr.graphs):
                    yield from iter_graphs(sub, f"{path}{node.name or node.op_type}/{attr.name}[{i}]/")


class GraphIndex:
    """Producers, consumers and constant values of one ONNX graph.

    ``outer`` holds constants visible from an enclosing graph (for subgraphs).
    """

    def __init__(self, graph: onnx.GraphProto, opset: int, outer: dict[str, onnx.TensorProto] | None = None):
        self.graph = graph
        self.opset = opset
        self.initializers: dict[str, onnx.TensorProto] = dict(outer or {})
        for init in graph.initializer:
            self.initializers[init.name] = init
        self.graph_inputs = {i.name for i in graph.input} - set(self.initializers)
        self.graph_outputs = {o.name for o in graph.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
        self._cache: dict[str, np.ndarray | None] = {}
        self._positions: dict[int, int] | None = None

    def positions(self) -> dict[int, int]:
        """``id(node)`` -> the node's position in the graph (made once; the graph is not edited
        while an index on it is used)."""
        if self._positions is None:
            self._positions = {id(n): i for i, n in enumerate(self.graph.node)}
        return self._positions

    def is_constant(self, name: str) -> bool:
        """Whether ``name`` is an initializer (its bytes are not read: a conv weight's copy cost
        more than the whole BN inventory) or computed from constants only."""
        return name in self.initializers or self.constant(name) is not None

    def constant(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is an initializer or computed from constants only."""
        if name in self._cache:
            return self._cache[name]
        self._cache[name] = None  # guards cycles
        value = self._evaluate(name, depth=0)
        self._cache[name] = value
        return value

    def constant_shape(self, name: str) -> tuple[int, ...] | None:
        """The shape of constant ``name``: an initializer's declared dims (its data is not
        read: a conv weight's shape costs nothing), else the computed constant's shape."""
        init = self.initializers.get(name)
        if init is not None and all(d >= 0 for d in init.dims):
            return tuple(int(d) for d in init.dims)
        value = self.constant(name)
        return None if value is None else tuple(np.shape(value))

    def constant_source(self, name: str) -> str:
        """How a constant is stored: initializer, Constant node, or computed chain."""
        if name in self.initializers:
            return "initializer"
        node = self.producer.get(name)
        if node is None:
            return "input"
        return "Constant node" if node.op_type == "Constant" else f"{node.op_type} of constants"

    def _evaluate(self, name: str, depth: int) -> np.ndarray | None:
        if not name:
            return None
        if name in self.initializers:
            return limits.tensor_value(self.initializers[name])
        node = self.producer.get(name)
        if node is None or depth > MAX_CONSTANT_DEPTH:
            return None
        if node.op_type == "Constant":
            return _constant_node_value(node)
        if node.op_type == "CastLike" and len(node.input) == 2:
            # Only the *type* of the second input matters (dynamo exports write
            # CastLike(constant, graph_input) for default biases).
            return self._cast_like(node, depth)
        if node.domain not in ("", "ai.onnx") or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        ):
            return None
        inputs = []
        for inp in node.input:
            if not inp:
                inputs.append(None)
                continue
            if inp in self._cache and self._cache[inp] is not None:
                inputs.append(self._cache[inp])
                continue
            value = self._evaluate(inp, depth + 1)
            if value is None:
                return None
            self._cache[inp] = value
            inputs.append(value)
        if node.op_type == "Identity":
            return inputs[0]
        limits.check_constant_node(node, inputs)
        return _run_single_node(node, inputs, self.opset).get(name)

    def _cast_like(self, node: onnx.NodeProto, depth: int) -> np.ndarray | None:
        value = self._evaluate(node.input[0], depth + 1)
        if value is None:
            return None
        elem = self.elem_type(node.input[1])
        if elem is None:
            like = self._evaluate(node.input[1], depth + 1)
            if like is None:
                return None
            return np.asarray(value).astype(like.dtype)
        return np.asarray(value).astype(onnx.helper.tensor_dtype_to_np_dtype(elem))

    def elem_type(self, name: str) -> int | None:
        """The ONNX element type of ``name`` where the graph declares it, else None."""
        if name in self.initializers:
            return int(self.initializers[name].data_type)
        for vi in (*self.graph.input, *self.graph.value_info, *self.graph.output):
            if vi.name == name and vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                return int(vi.type.tensor_type.elem_type)
        return None


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return limits.tensor_value(attr.t, f" of Constant node {node.name!r}")
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None


def _run_single_node(node: onnx.NodeProto, inputs: list, opset: int) -> dict[str, np.ndarray]:
    """Evaluate one node on constant inputs with ONNX's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    names = [f"in{i}" if v is not None else "" for i, v in enumerate(inputs)]
    clone = onnx.NodeProto()
    clone.CopyFrom(node)
    del clone.input[:]
    clone.input.extend(names)
    graph = onnx.helper.make_graph(
        [clone],
        "const",
        [],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o],
        initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names, inputs, strict=True) if v is not None],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        results = ReferenceEvaluator(model).run(None, {})
    except Exception:
        return {}
    return {o: np.asarray(r) for o, r in zip([o for o in node.output if o], results, strict=True)}


#: initializers with more elements than this (and not int32/int64, the types of shape
#: tensors) are left out of shape inference's copy of the model
_WEIGHT_ELEMENTS = 1024


def value_types(model: onnx.ModelProto) -> dict[str, tuple[int, int | None]]:
    """name -> (ONNX element type, rank or None) for every value of the main graph that shape
    inference can type (graph inputs, outputs, intermediate values).

    Inference runs on a copy of the graph in which every large floating-point (or other
    non-index) initializer is declared as a graph input of the same type and shape instead:
    inference reads only the type and shape of such tensors, and copying and serialising the
    weights to the C++ checker and back made up nearly all of its cost (0.2 s for a ResNet-18,
    against 0.01 s without them). Integer initializers, which ops like Reshape read as shapes,
    are kept. When inference fails (it does on some valid models), only the types the graph
    itself declares are known."""
    out: dict[str, tuple[int, int | None]] = {}
    for name, (elem, dims) in _inferred(model).items():
        out[name] = (elem, None if dims is None else len(dims))
    return out


def static_dims(
    model: onnx.ModelProto, input_name: str, input_dims: tuple[int, ...]
) -> dict[str, tuple[int | None, ...] | None]:
    """name -> dims (None where unknown) of the main graph's values when the input
    ``input_name`` has the concrete shape ``input_dims``, by the same light shape inference
    as :func:`value_types` (with data propagation, so Shape -> Reshape chains resolve)."""
    dims = {input_name: tuple(int(d) for d in input_dims)}
    return {name: shape for name, (_, shape) in _inferred(model, dims).items()}


def _inferred(
    model: onnx.ModelProto, input_dims: dict[str, tuple[int, ...]] | None = None
) -> dict[str, tuple[int, tuple[int | None, ...] | None]]:
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph, source = light.graph, model.graph
    graph.name = source.name
    for name in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, name).extend(getattr(source, name))
    for vi in graph.input:
        fixed = (input_dims or {}).get(vi.name)
        if fixed is not None and vi.type.HasField("tensor_type"):
            shape = vi.type.tensor_type.shape
            shape.Clear()
            for d in fixed:
                shape.dim.add().dim_value = d
    if input_dims:  # stale intermediate shapes would contradict the new input shape
        del graph.value_info[:]
    declared = {vi.name for vi in graph.input}
    kept: list[onnx.TensorProto] = []
    moved: list[onnx.ValueInfoProto] = []
    for init in source.initializer:
        elements = int(np.prod(init.dims)) if len(init.dims) else 1
        index_type = init.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
        if elements > _WEIGHT_ELEMENTS and not index_type:
            if init.name not in declared:
                moved.append(
                    onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                )
            continue
        kept.append(init)
    graph.initializer.extend(kept)
    graph.input.extend(moved)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=bool(input_dims))
    except Exception:  # shape inference fails on some valid models; shapes stay unknown
        inferred = light
    moved_names = {vi.name for vi in moved}  # not graph inputs of the model itself
    out: dict[str, tuple[int, tuple[int | None, ...] | None]] = {}
    g = inferred.graph
    inputs = [vi for vi in g.input if vi.name not in moved_names]
    for vi in (*g.value_info, *inputs, *g.output):
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        shape = None
        if tt.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tt.shape.dim
            )
        out[vi.name] = (tt.elem_type, shape)
    return out


def model_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1
