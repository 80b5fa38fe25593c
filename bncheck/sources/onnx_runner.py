"""Running ONNX models with onnxruntime and observing the input of every BatchNormalization
node inside onnxruntime (no torch import on this path).

The runner works on copies of the graph:

* the *moments* graph adds, for every BN input ``X``, reduction nodes whose results become extra
  graph outputs. For inputs of known rank >= 3 (``N, C, spatial...``)::

      m_nc = GlobalAveragePool(X)                  # per-sample means, (N, C, 1, ...)
      m    = ReduceMean(m_nc, axes=[0])            # channel mean of the batch, (1, C, 1, ...)
      q_nc = GlobalAveragePool((X - m) * (X - m))  # mean squared deviation per sample
      n    = Size(X)

  and ``m2_c = n / (N C) * sum_n q_nc`` in float64. Every element is centred at the batch's
  channel mean before squaring, so the variance is exact to float32 rounding whatever the
  mean/std ratio (the error of ``m`` enters squared only: ``sum (x - m')**2 = m2 + n (m - m')**2``).
  Only (N, C) values leave the runtime. GlobalAveragePool and Mul run in onnxruntime's blocked
  NCHWc layout next to the convolutions; among the exact forms measured on a ResNet-18 this is
  the cheapest (ReduceMean + Sub + ReduceSumSquare over (N, H, W), a float64 cast, and a
  training-mode BatchNormalization used as a statistics op are all slower; per-sample centring
  loses precision in the float32 per-sample means when mean/std is large). Inputs of rank 2 or
  unknown rank are reshaped to (N, C, L) and reduced over (N, L) with ReduceMean the same way.
  float16/bfloat16 inputs are cast to float32 first.
* the *train* graph replaces every BatchNormalization by batch-statistics normalisation written
  with standard ops (no training-mode kernel needed)::

      X3 = Reshape(X, [0, 0, -1]);  mean = ReduceMean(X3, axes=[0, 2])
      D = X3 - mean;  var = ReduceMean(D * D, axes=[0, 2])
      Y = Reshape(D / Sqrt(var + eps) * scale + B, Shape(X))

  and also returns ``mean``, ``var`` and ``Size(X)`` as outputs for :meth:`train_moments`.

Sessions use the CPU execution provider with every graph optimisation enabled and default
intra-op threads.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bncheck.analysis.moments import Moments
from bncheck.errors import ModelLoadError, UsageError
from bncheck.sources.runner import InputSpec, ModelRunner, dedupe, select_layers

#: protobuf cannot serialise more than this; larger models go through a temporary file
_PROTO_LIMIT = 2**31 - 2**20
_HALF_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
_SUBGRAPH_REASON = (
    "inside a control-flow subgraph (If/Loop/Scan body), whose values cannot be graph outputs"
)
_SPATIAL_REASON = "spatial=0 (per-activation statistics), not per-channel"


def onnx_input_spec(model: onnx.ModelProto) -> InputSpec:
    """The first graph input that is not an initializer."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise UsageError("the ONNX model has no input to feed data into.")
    first = inputs[0]
    ttype = first.type.tensor_type if first.type.HasField("tensor_type") else None
    dtype = "float32"
    if ttype is not None and ttype.elem_type:
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
        except (KeyError, TypeError, ValueError):
            dtype = "float32"
    if ttype is None or not ttype.HasField("shape"):
        return InputSpec(name=first.name, shape=None, dtype=dtype)
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in ttype.shape.dim
    ]
    return InputSpec(
        name=first.name,
        shape=tuple(dims[1:]) if dims else None,
        dtype=dtype,
        batch=dims[0] if dims else None,
    )


class OnnxRunner(ModelRunner):
    """A :class:`ModelRunner` for an ``OnnxSource``."""

    def __init__(
        self, source, *, layers: list[str] | None = None, intra_op_threads: int | None = None
    ) -> None:
        """``layers``: names of the BN layers to observe (default: all; train passes rewrite every
        BN node whatever the selection); ``intra_op_threads``: onnxruntime's (default: its own)."""
        self._source = source
        self._model: onnx.ModelProto = source.model
        self._opset = source.opset
        self._threads = intra_op_threads
        self.input_spec = onnx_input_spec(self._model)
        inits = {i.name for i in self._model.graph.initializer}
        feeds = [i.name for i in self._model.graph.input if i.name not in inits]
        if len(feeds) > 1:
            raise UsageError(
                f"the ONNX model has {len(feeds)} inputs ({', '.join(feeds)}); bncheck feeds a single "
                "input tensor."
            )
        if not self._model.graph.output:
            raise UsageError("the ONNX model has no output.")
        self._output = self._model.graph.output[0].name
        all_layers = list(source.bn_layers())
        wanted = select_layers([layer.name for layer in all_layers], layers)
        self.channels = {layer.name: int(layer.num_features) for layer in all_layers}
        self.unhookable: dict[str, str] = {}
        self.frozen: dict[str, str] = {}
        #: layer name -> index of its BatchNormalization node in the main graph
        self._nodes: dict[str, int] = {}
        for index, node in enumerate(self._model.graph.node):
            if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
                self._nodes.setdefault(node.name or node.output[0], index)
        for layer in all_layers:
            index = self._nodes.get(layer.name)
            node = self._model.graph.node[index] if index is not None else None
            if node is None:
                self.unhookable[layer.name] = self.frozen[layer.name] = _SUBGRAPH_REASON
            elif any(a.name == "spatial" and a.i == 0 for a in node.attribute):
                self.unhookable[layer.name] = self.frozen[layer.name] = _SPATIAL_REASON
        #: every layer whose node the train graph rewrites (the selection does not matter there)
        self._rewritten = dedupe([la.name for la in all_layers if la.name not in self.frozen])
        self.unhookable = {k: v for k, v in self.unhookable.items() if k in wanted}
        self.layers = dedupe(
            [la.name for la in all_layers if la.name in wanted and la.name not in self.unhookable]
        )
        self._types = source.value_types()
        self._names = _NameMaker(self._model)
        self._stats_outputs: dict[str, tuple[str, ...]] = {}
        self._train_outputs: dict[str, tuple[str, str, str]] = {}
        self._sessions: dict[str, object] = {}

    # ------------------------------------------------------------------ sessions

    def _session(self, kind: str):
        if kind not in self._sessions:
            build = {
                "plain": lambda: self._model,
                "moments": self._moments_model,
                "train": self._train_model,
            }
            self._sessions[kind] = self._make_session(build[kind]())
        return self._sessions[kind]

    def _make_session(self, model: onnx.ModelProto):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self._threads:
            options.intra_op_num_threads = int(self._threads)
        try:
            if _fits_in_one_message(model):
                return ort.InferenceSession(
                    model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
            with tempfile.TemporaryDirectory(prefix="bncheck-") as tmp:
                path = Path(tmp) / "model.onnx"
                onnx.save_model(
                    model, str(path), save_as_external_data=True, location="weights.bin"
                )
                return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            first = (
                str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            )
            raise ModelLoadError(f"onnxruntime cannot load the model ({first}).") from exc

    def close(self) -> None:
        self._sessions.clear()

    # ------------------------------------------------------------------ running

    def _run(self, kind: str, names: list[str], x: np.ndarray) -> list:
        session = self._session(kind)
        try:
            return session.run(names, {self.input_spec.name: x})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise self._run_failed(exc, x) from exc

    def _forward(self, x: np.ndarray, bn: str) -> np.ndarray:
        kind = "train" if bn == "train" else "plain"
        return np.asarray(self._run(kind, [self._output], x)[0])

    def _moments(self, x: np.ndarray):
        session_names = self._moments_names()
        values = self._run("moments", session_names, x)
        out = np.asarray(values[0])
        result: dict[str, Moments] = {}
        for k, name in enumerate(self.layers):
            mean, msd, size = values[1 + 3 * k : 4 + 3 * k]
            result[name] = _moments_from_outputs(mean, msd, int(np.asarray(size)))
        return out, result

    def _train_moments(self, x: np.ndarray):
        self._session("train")
        names = [self._output]
        for name in self.layers:
            names.extend(self._train_outputs[name])
        values = self._run("train", names, x)
        result: dict[str, Moments] = {}
        for k, name in enumerate(self.layers):
            mean, var, size = values[1 + 3 * k : 4 + 3 * k]
            mean = np.asarray(mean, np.float64).reshape(-1)
            count = int(np.asarray(size)) // max(mean.size, 1)
            result[name] = Moments.from_batch(
                count, mean, np.asarray(var, np.float64).reshape(-1) * count
            )
        return np.asarray(values[0]), result

    def _moments_names(self) -> list[str]:
        self._session("moments")
        names = [self._output]
        for name in self.layers:
            names.extend(self._stats_outputs[name])
        return names

    # ------------------------------------------------------------------ graph rewrites

    def _moments_model(self) -> onnx.ModelProto:
        model = copy.deepcopy(self._model)
        graph = model.graph
        new_nodes, new_outputs, new_inits = [], [], []
        for name in self.layers:
            node = graph.node[self._nodes[name]]
            x = node.input[0]
            elem, rank = self._types.get(x, (TensorProto.UNDEFINED, None))
            prefix = self._names.prefix(name)
            nodes, xf, out_type = _as_float(x, elem, prefix)
            mean, sq = prefix + "mean_c", prefix + "msd_nc"
            if rank is not None and rank >= 3:
                # per-sample means (cheap, NCHWc), their mean over the batch, then every element
                # centred at that channel mean; squares averaged per sample and channel
                nodes.append(helper.make_node("GlobalAveragePool", [xf], [prefix + "mean_nc"]))
                nodes += self._reduce_mean(prefix + "mean_nc", mean, (0,), new_inits)
                centred, sq_op = xf, "GlobalAveragePool"
            else:
                centred = prefix + "x3"
                new_inits.append(
                    numpy_helper.from_array(np.array([0, 0, -1], np.int64), prefix + "shape3")
                )
                nodes.append(helper.make_node("Reshape", [xf, prefix + "shape3"], [centred]))
                nodes += self._reduce_mean(centred, mean, (0, 2), new_inits)
                sq_op = None
            nodes += [
                helper.make_node("Sub", [centred, mean], [prefix + "dev"]),
                helper.make_node("Mul", [prefix + "dev", prefix + "dev"], [prefix + "dev2"]),
            ]
            if sq_op:
                nodes.append(helper.make_node(sq_op, [prefix + "dev2"], [sq]))
            else:
                nodes += self._reduce_mean(prefix + "dev2", sq, (0, 2), new_inits)
            nodes.append(helper.make_node("Size", [xf], [prefix + "size"]))
            new_nodes += nodes
            self._stats_outputs[name] = (mean, sq, prefix + "size")
            new_outputs += [
                helper.make_tensor_value_info(mean, out_type, None),
                helper.make_tensor_value_info(sq, out_type, None),
                helper.make_tensor_value_info(prefix + "size", TensorProto.INT64, None),
            ]
        graph.node.extend(new_nodes)
        graph.initializer.extend(new_inits)
        graph.output.extend(new_outputs)
        return model

    def _train_model(self) -> onnx.ModelProto:
        model = copy.deepcopy(self._model)
        graph = model.graph
        consumers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                consumers[name] = consumers.get(name, 0) + 1
        graph_outputs = {o.name for o in graph.output}
        rewritten: list[onnx.NodeProto] = []
        new_outputs, new_inits = [], []
        targets = {self._nodes[name]: name for name in self._rewritten}
        for index, node in enumerate(self._model.graph.node):  # the untouched original
            name = targets.get(index)
            if name is None:
                rewritten.append(node)
                continue
            prefix = self._names.prefix(name + "/train")
            elem = self._types.get(node.input[0], (TensorProto.UNDEFINED, None))[0]
            nodes, mean, var, size = self._batch_norm_nodes(node, elem, prefix, new_inits)
            extra_used = any(
                o and (consumers.get(o) or o in graph_outputs) for o in node.output[1:]
            )
            if extra_used:  # keep the original node for its other outputs; Y comes from the rewrite
                kept = copy.deepcopy(node)
                kept.output[0] = prefix + "unused_y"
                rewritten.append(kept)
            rewritten.extend(nodes)
            self._train_outputs[name] = (mean, var, size)
            out_type = elem if elem not in (TensorProto.UNDEFINED,) else TensorProto.FLOAT
            new_outputs += [
                helper.make_tensor_value_info(mean, out_type, None),
                helper.make_tensor_value_info(var, out_type, None),
                helper.make_tensor_value_info(size, TensorProto.INT64, None),
            ]
        del graph.node[:]
        graph.node.extend(rewritten)
        graph.initializer.extend(new_inits)
        graph.output.extend(new_outputs)
        return model

    def _batch_norm_nodes(self, node: onnx.NodeProto, elem: int, prefix: str, inits: list):
        """Nodes computing Y of ``node`` with batch statistics; returns (nodes, mean, var, size)."""
        x, scale, bias = node.input[0], node.input[1], node.input[2]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        np_type = (
            helper.tensor_dtype_to_np_dtype(elem) if elem != TensorProto.UNDEFINED else np.float32
        )
        inits += [
            numpy_helper.from_array(np.array([0, 0, -1], np.int64), prefix + "shape3"),
            numpy_helper.from_array(np.array([1, -1, 1], np.int64), prefix + "shape_c"),
            numpy_helper.from_array(np.array(eps, dtype=np_type), prefix + "eps"),
        ]
        p = prefix
        mean, var = p + "mean", p + "var"
        nodes = [helper.make_node("Reshape", [x, p + "shape3"], [p + "x3"])]
        nodes += self._reduce_mean(p + "x3", mean, (0, 2), inits)
        nodes += [
            helper.make_node("Sub", [p + "x3", mean], [p + "dev"]),
            helper.make_node("Mul", [p + "dev", p + "dev"], [p + "dev2"]),
        ]
        nodes += self._reduce_mean(p + "dev2", var, (0, 2), inits)
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

    def _reduce_mean(self, x: str, out: str, axes: tuple[int, ...], inits: list) -> list:
        """ReduceMean keeping dims: axes as an attribute before opset 18, as an input from 18."""
        if self._opset < 18:
            return [helper.make_node("ReduceMean", [x], [out], axes=list(axes), keepdims=1)]
        name = out + "/axes"
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), name))
        return [helper.make_node("ReduceMean", [x, name], [out], keepdims=1)]


# ------------------------------------------------------------------------ helpers


def _moments_from_outputs(mean, msd, size: int) -> Moments:
    """Moments from the stats outputs: the channel mean ``(1, C, 1...)``, the mean squared
    deviation from it per group ``(G, C, 1...)`` (G = samples, or 1), and ``size`` = the number
    of elements of the BN input. ``m2 = (size / (G C)) * sum_g msd_g``."""
    mean = np.asarray(mean, np.float64).reshape(-1)
    msd = np.asarray(msd, np.float64)
    groups = msd.shape[0]
    if size == 0:
        return Moments.empty(mean.size)
    per_group = size // (groups * mean.size)
    return Moments.from_batch(
        size // mean.size, mean, per_group * msd.reshape(groups, -1).sum(axis=0)
    )


def _tensor_data_bytes(model: onnx.ModelProto) -> int | None:
    """Bytes of tensor data held in ``model`` (initializers, sparse initializers and tensor
    attributes such as Constant values, in every graph and local function), from their shapes
    and element types; None when a size cannot be told that way (strings, unknown types)."""

    def size(tensor: onnx.TensorProto) -> int | None:
        if tensor.data_location == TensorProto.EXTERNAL:
            return 0  # not stored in the message
        if tensor.data_type == TensorProto.STRING:
            return None
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            return None
        return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize if len(tensor.dims) else itemsize

    tensors: list[onnx.TensorProto] = []

    def collect(graph: onnx.GraphProto) -> None:
        tensors.extend(graph.initializer)
        for sparse in graph.sparse_initializer:
            tensors.extend((sparse.values, sparse.indices))
        collect_nodes(graph.node)

    def collect_nodes(nodes) -> None:
        for node in nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    tensors.append(attr.t)
                elif attr.type == onnx.AttributeProto.TENSORS:
                    tensors.extend(attr.tensors)
                elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                    tensors.extend((attr.sparse_tensor.values, attr.sparse_tensor.indices))
                elif attr.type == onnx.AttributeProto.GRAPH:
                    collect(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for graph in attr.graphs:
                        collect(graph)

    collect(model.graph)
    for function in model.functions:
        collect_nodes(function.node)
    total = 0
    for tensor in tensors:
        n = size(tensor)
        if n is None:
            return None
        total += n
    return total


def _fits_in_one_message(model: onnx.ModelProto) -> bool:
    """Whether ``model`` serialises to less than protobuf's 2 GiB. ``ByteSize()`` costs as much
    as serialising (60 ms for a 45 MB ResNet-18), so it is asked only when the tensor data
    alone comes near the limit; the rest of a model (nodes, names) is small."""
    data = _tensor_data_bytes(model)
    if data is not None and data < _PROTO_LIMIT // 2:
        return True
    return model.ByteSize() < _PROTO_LIMIT


def _as_float(x: str, elem: int, prefix: str) -> tuple[list, str, int]:
    """Cast half-precision BN inputs to float32 before reducing them."""
    if elem in _HALF_TYPES:
        return (
            [helper.make_node("Cast", [x], [prefix + "xf"], to=TensorProto.FLOAT)],
            prefix + "xf",
            TensorProto.FLOAT,
        )
    if elem == TensorProto.DOUBLE:
        return [], x, TensorProto.DOUBLE
    return [], x, TensorProto.FLOAT


class _NameMaker:
    """Unique value names for the nodes bncheck adds (never clashing with the model's)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._used: set[str] = set()
        graph = model.graph
        for node in graph.node:
            self._used.update(node.input)
            self._used.update(node.output)
        self._used.update(i.name for i in graph.input)
        self._used.update(i.name for i in graph.initializer)
        self._count = 0

    def prefix(self, label: str) -> str:
        while True:
            self._count += 1
            prefix = f"bncheck/{self._count}/{label}/"
            if not any(name.startswith(prefix) for name in self._used):
                self._used.add(prefix)
                return prefix
