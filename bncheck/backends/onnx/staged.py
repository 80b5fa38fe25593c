"""An ONNX model cut into the segments of the layer-by-layer exact estimate
(:mod:`bncheck.numerics.stages`): one onnxruntime session per segment, whose graph inputs are
the frontier entering it (and the running mean and variance of its BN nodes, fed per level)
and whose outputs are the values the next segments read. The moments of a level's BN inputs
are taken from those outputs in float64 (two-pass per batch, as the runner's two-pass form).

Models that cannot be cut get ``None`` and a reason: a BN layer inside a control-flow
subgraph or with ``spatial=0``, a fixed batch size above 1 (one of 1 runs a sample at a time), more than one data input, values whose
element type shape inference cannot tell."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from bncheck.backends.onnx import bn_nodes
from bncheck.backends.onnx.bn_nodes import BnGraph
from bncheck.backends.onnx.inputs import input_spec
from bncheck.backends.onnx.session import open_session
from bncheck.backends.onnx.truncate import subgraph_inputs
from bncheck.backends.staged import Frontier, StagedModel, run_failed
from bncheck.numerics.moments import Moments
from bncheck.numerics.stages import Op, StagePlan, plan_stages

_STAT = "bncheck/staged/{}/{}"


def onnx_staged(source, layers: list[str]) -> tuple[StagedModel | None, str]:
    """The staged form of ``source`` estimating ``layers``, or (None, why not)."""
    model = source.model
    all_layers = list(source.bn_layers())
    bn = BnGraph.of(source, all_layers)
    blocked = {n: r for n, r in bn_nodes.unobservable(all_layers, bn).items() if n in layers}
    if blocked:
        name, why = next(iter(blocked.items()))
        return None, f"BN layer {name} is {why}"
    spec = input_spec(model)
    if spec.batch not in (None, 1):  # a last partial batch would not fit (one of 1 always does)
        return None, f"the model is exported with a fixed batch size of {spec.batch}"
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    data = [i.name for i in graph.input if i.name not in inits]
    if len(data) != 1:
        return None, "the model reads more than one input"
    by_index = {index: name for name, index in bn.nodes.items() if name in set(layers)}
    ops = []
    for index, node in enumerate(graph.node):
        reads = [v for v in node.input if v] + sorted(subgraph_inputs(node))
        ops.append(Op(index, tuple(reads), tuple(o for o in node.output if o), by_index.get(index)))
    plan = plan_stages(ops, data, outputs=(graph.output[0].name,))
    types = source.value_types()
    untyped = [v for f in plan.frontiers[1:] for v in f if not types.get(v, (0,))[0]]
    if untyped:
        return None, f"shape inference cannot tell the type of {untyped[0]}"
    staged = OnnxStaged(model, plan, types, bn, getattr(source, "device", "cpu"))
    staged.batch = spec.batch  # its segments run one sample at a time (a PicoDet layout detector)
    return staged, ""


class OnnxStaged(StagedModel):
    def __init__(self, model: onnx.ModelProto, plan: StagePlan, types, bn: BnGraph, device: str) -> None:
        self.plan = plan
        self._bn = bn
        self._level_of = {name: k for k, names in enumerate(plan.levels, start=1) for name in names}
        self._stats: dict[str, np.ndarray] = {}
        self._model, self._types, self._device = model, types, device
        #: segment -> (session, its inputs, its outputs), opened when a segment first runs (a
        #: pass whose frontiers all stay in the cache never opens the first segments twice)
        self._sessions: dict[int, tuple] = {}
        self._closed = False
        self._dtypes = {name: np.dtype(helper.tensor_dtype_to_np_dtype(_elem(types, bn.node(name).input[3], model))) for name in self._level_of}
        self._input_dtype = np.dtype(input_spec(model).dtype)

    def set_statistics(self, stats) -> None:
        for name, (mean, var) in stats.items():
            dtype = self._dtypes.get(name, np.dtype(np.float32))
            self._stats[_STAT.format(name, "mean")] = np.asarray(mean, np.float64).astype(dtype)
            self._stats[_STAT.format(name, "var")] = np.asarray(var, np.float64).astype(dtype)

    def start(self, x: np.ndarray) -> Frontier:
        try:
            return self._run(0, {self.plan.frontiers[0][0]: np.ascontiguousarray(x, dtype=self._input_dtype)})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise run_failed(exc, x) from exc

    def advance(self, k: int, frontier: Frontier) -> Frontier:
        return self._run(k, frontier)

    def _session(self, k: int):
        """Segment ``k``'s session, its inputs and outputs (None: it computes nothing)."""
        if not self.plan.produced(k):  # nothing computed between the cuts (a BN on the input)
            return None
        if k not in self._sessions:
            if self._closed:
                raise RuntimeError("the staged model is closed")
            session = open_session(_segment(self._model, self.plan, k, self._types, self._level_of), device=self._device, arena=False)
            self._sessions[k] = (session, [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        return self._sessions[k]

    def release_below(self, k: int) -> None:
        for index in [i for i in self._sessions if i < k]:
            del self._sessions[index]

    def _run(self, k: int, frontier: Frontier) -> Frontier:
        out = {}
        segment = self._session(k)
        if segment is not None:
            session, inputs, outputs = segment
            feeds = {name: frontier[name] if name in frontier else self._stats[name] for name in inputs}
            out = dict(zip(outputs, session.run(outputs, feeds), strict=True))
        return {v: out[v] if v in out else frontier[v] for v in self.plan.frontiers[k + 1]}

    def moments(self, k: int, frontier: Frontier) -> dict[str, Moments]:
        out = {}
        for name in self.plan.levels[k - 1]:
            x = np.asarray(frontier[self.plan.bn_input[name]])
            if x.ndim < 2 or x.size == 0:
                continue
            out[name] = _moments(x)
        return out

    def nbytes(self, frontier: Frontier) -> int:
        return sum({id(a): np.asarray(a).nbytes for a in frontier.values()}.values())

    def close(self) -> None:
        self._sessions = {}
        self._closed = True


def _moments(x: np.ndarray) -> Moments:
    """Two-pass float64 moments over every axis but 1 of a BN input."""
    t = x.reshape(x.shape[0], x.shape[1], -1)
    mean = t.mean(axis=(0, 2), dtype=np.float64)
    centred = t - mean.astype(t.dtype)[None, :, None]
    shift = centred.mean(axis=(0, 2), dtype=np.float64)  # the rounding of the float mean
    m2 = np.einsum("ncl,ncl->c", centred, centred, dtype=np.float64) - shift * shift * (t.shape[0] * t.shape[2])
    return Moments.from_batch(t.shape[0] * t.shape[2], mean.astype(t.dtype).astype(np.float64) + shift, np.maximum(m2, 0.0))


def _segment(model: onnx.ModelProto, plan: StagePlan, k: int, types, level_of: dict[str, int]) -> onnx.ModelProto:
    """Segment ``k`` as a model: frontier ``k`` in (with the running statistics of its BN
    nodes), the values of frontier ``k + 1`` it computes out, the static nodes it reads."""
    graph = model.graph
    ops = set(plan.segments[k])
    static = set(plan.static)
    producer = {o: i for i, node in enumerate(graph.node) for o in node.output if o}
    needed: set[int] = set()
    stack = [v for i in ops for v in list(graph.node[i].input) + sorted(subgraph_inputs(graph.node[i]))]
    while stack:
        index = producer.get(stack.pop())
        if index is None or index not in static or index in needed:
            continue
        needed.add(index)
        stack.extend(list(graph.node[index].input) + sorted(subgraph_inputs(graph.node[index])))
    nodes, stat_inputs = [], []
    for index in sorted(ops | needed):
        node = graph.node[index]
        name = node.name or node.output[0]
        if node.op_type == "BatchNormalization" and level_of.get(name) == k:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            for slot, what in ((3, "mean"), (4, "var")):
                copy.input[slot] = _STAT.format(name, what)
                stat_inputs.append(helper.make_tensor_value_info(copy.input[slot], _elem(types, node.input[slot], model), None))
            node = copy
        nodes.append(node)
    read = {v for n in nodes for v in list(n.input) + sorted(subgraph_inputs(n))}
    inputs = [helper.make_tensor_value_info(v, types[v][0], None) for v in plan.frontiers[k] if v in read] + stat_inputs
    outputs = [helper.make_tensor_value_info(v, types[v][0], None) for v in plan.produced(k)]
    sub = helper.make_graph(nodes, f"{graph.name}_segment{k}", inputs, outputs, initializer=[i for i in graph.initializer if i.name in read])
    out = helper.make_model(sub, opset_imports=list(model.opset_import), producer_name=model.producer_name)
    out.ir_version = model.ir_version
    out.functions.extend(model.functions)
    return out


def _elem(types, value: str, model: onnx.ModelProto) -> int:
    for init in model.graph.initializer:
        if init.name == value:
            return init.data_type
    return types.get(value, (onnx.TensorProto.FLOAT,))[0] or onnx.TensorProto.FLOAT
