"""Per-site proof of an ONNX fold (see :mod:`bncheck.numerics.site_proof`), read from the two
graphs themselves, whatever pattern did the rewrite.

For each folded BN (output ``y``), the producer that fed it (the Conv / ConvTranspose / Gemm /
MatMul found walking back from the BN input through per-channel constant ops) gives the data
input ``d`` and the input geometry. Both the original and the folded graph are cut down to
the nodes between ``d`` and ``y`` (with the constants they read):

* the original cut runs in float64 in onnx's own numpy reference implementation
  (``onnx.reference.ReferenceEvaluator``, every float constant cast to float64);
* the folded cut runs as written in onnxruntime (no graph optimisation), in the model's dtype;

all cuts of one side go into one tiny model (names prefixed per site), so one reference
evaluation and one session prove them all. The cuts' floating-point initializers (the
weights) are fed as inputs, the arrays read from the two graphs, instead of being copied into
the tiny models: no weight is copied or serialised again (a ResNet-18's 45 MB cost about a
second that way). A cut that reads the model input or an outer-scope computed value is not
isolatable: the site is reported as not proved on its own (whole-model verification covers it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bncheck.backends.onnx.graph import GraphIndex, iter_graphs, model_opset
from bncheck.backends.onnx.session import open_session
from bncheck.numerics.site_proof import (
    ProducerGeometry,
    SiteProof,
    judge,
    random_input,
    unproved,
    worst_of,
)

METHOD = "onnxruntime (folded op) vs onnx reference in float64 (original pair)"
PRODUCERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: ops a walk from the BN back to its producer may pass (per-channel constant arithmetic)
_PASS_THROUGH = ("Add", "Sub", "Mul", "Div", "Identity", "Cast", "Reshape")
_MAX_WALK = 4
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
#: initializer types fed as inputs (numpy has them; bfloat16 ones are copied into the tiny model)
_FED = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


class NotIsolatable(Exception):
    """The site cannot be run on its own (the reason is the message)."""


@dataclass
class Cut:
    """The nodes between a data input and an output, and the initializers they read."""

    data: str
    output: str
    nodes: list[onnx.NodeProto]
    #: the initializers copied into the tiny model (shapes, axes; bfloat16 ones)
    initializers: list[onnx.TensorProto]
    #: the other initializers' values (the weights, float16/32/64): fed as inputs
    values: dict[str, np.ndarray]


class _Graphs:
    """Every graph of a model (main and subgraphs) with its index and the constants in scope."""

    def __init__(self, model: onnx.ModelProto):
        opset = model_opset(model)
        self.indexes: list[GraphIndex] = []
        self._bns: dict[str, tuple[GraphIndex, onnx.NodeProto]] = {}
        outer: dict[str, onnx.TensorProto] = {}
        for _, graph in iter_graphs(model.graph):
            index = GraphIndex(graph, opset, outer if graph is not model.graph else None)
            outer = {**outer, **{i.name: i for i in graph.initializer}}
            self.indexes.append(index)
            for node in graph.node:
                if node.op_type == "BatchNormalization":
                    self._bns.setdefault(node.name or node.output[0], (index, node))

    def find_bn(self, name: str) -> tuple[GraphIndex, onnx.NodeProto] | None:
        return self._bns.get(name)

    def with_output(self, name: str) -> GraphIndex | None:
        for index in self.indexes:
            if name in index.producer:
                return index
        return None


def _data_input(index: GraphIndex, node: onnx.NodeProto) -> str | None:
    for name in node.input:
        if name and not index.is_constant(name):
            return name
    return None


def find_producer(index: GraphIndex, bn: onnx.NodeProto) -> onnx.NodeProto:
    """The Conv/ConvTranspose/Gemm/MatMul whose output the BN normalises."""
    name = bn.input[0]
    for _ in range(_MAX_WALK):
        node = index.producer.get(name)
        if node is None:
            break
        if node.op_type in PRODUCERS:
            return node
        if node.op_type not in _PASS_THROUGH:
            break
        name = _data_input(index, node)
        if name is None:
            break
    raise NotIsolatable("no Conv/ConvTranspose/Gemm/MatMul producer found in front of the BN")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def geometry(index: GraphIndex, prod: onnx.NodeProto) -> ProducerGeometry:
    """The input a producer takes, from its weight's shape and its attributes."""
    a = _attrs(prod)
    weight = index.constant(prod.input[1]) if len(prod.input) > 1 else None
    if weight is None:
        raise NotIsolatable(f"the weight of {prod.op_type} {prod.name} is not a constant")
    if prod.op_type == "Gemm":
        if a.get("transA", 0):
            raise NotIsolatable("a Gemm with transA takes its input transposed")
        return ProducerGeometry("linear", int(weight.shape[1] if a.get("transB", 0) else weight.shape[0]))
    if prod.op_type == "MatMul":
        if weight.ndim != 2:
            raise NotIsolatable(f"a MatMul weight of {weight.ndim} dims")
        return ProducerGeometry("matmul", int(weight.shape[0]))
    if "output_shape" in a:
        raise NotIsolatable("a ConvTranspose with an output_shape attribute fixes its input size")
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    return ProducerGeometry.conv(
        weight.shape, groups=int(a.get("group", 1)), transposed=prod.op_type == "ConvTranspose",
        stride=a.get("strides"), dilation=a.get("dilations"),
        padding=None if auto_pad != "NOTSET" else a.get("pads"), same=auto_pad.startswith("SAME"),
        output_padding=a.get("output_padding"),
    )


def cut(index: GraphIndex, data: str, output: str) -> Cut:
    """The nodes computing ``output`` from ``data`` and constants."""
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, onnx.TensorProto] = {}
    seen: set[str] = set()
    stack = [output]
    while stack:
        name = stack.pop()
        if not name or name == data or name in seen:
            continue
        seen.add(name)
        if name in index.initializers:
            inits[name] = index.initializers[name]
            continue
        node = index.producer.get(name)
        if node is None:
            raise NotIsolatable(f"it reads {name}, a model input or an outer-scope value")
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            raise NotIsolatable("control flow between the producer and the BN")
        if node not in nodes:
            nodes.append(node)
            stack.extend(node.input)
        if len(nodes) > 64:
            raise NotIsolatable("more than 64 ops between the producer's input and the BN output")
    order = index.positions()
    nodes.sort(key=lambda n: order.get(id(n), 0))
    floats = {name: index.constant(name) for name, init in inits.items() if init.data_type in _FED}
    others = [init for name, init in inits.items() if name not in floats]
    return Cut(data, output, nodes, others, floats)


def _renamed(c: Cut, prefix: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The cut's nodes and (non-float) initializers with every name prefixed."""
    nodes = []
    for node in c.nodes:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + (node.name or node.op_type)
        new.input[:] = [prefix + n if n else "" for n in node.input]
        new.output[:] = [prefix + n if n else "" for n in node.output]
        nodes.append(new)
    inits = []
    for init in c.initializers:
        new = onnx.TensorProto()
        new.CopyFrom(init)
        new.name = prefix + init.name
        inits.append(new)
    return nodes, inits


def _to_float64(tensor: onnx.TensorProto) -> onnx.TensorProto:
    if tensor.data_type not in _FLOATS:
        return tensor
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _float64_nodes(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The cut with every float constant and cast in float64 (a reference needs no rounding);
    ``nodes`` are copies of their own (see :func:`_renamed`), changed in place."""
    for new in nodes:
        if new.op_type == "BatchNormalization":
            del new.output[1:]  # inference: the statistics outputs are unused (the fold checked)
        for attr in new.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in _FLOATS:
                attr.t.CopyFrom(_to_float64(attr.t))
            elif new.op_type == "Cast" and attr.name == "to" and attr.i in _FLOATS:
                attr.i = TensorProto.DOUBLE
    return nodes


def _model(nodes, inits, inputs: list[tuple[str, int]], outputs: list[tuple[str, int]], like: onnx.ModelProto) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "bncheck_site_proof",
        [helper.make_tensor_value_info(name, elem, None) for name, elem in inputs],
        [helper.make_tensor_value_info(name, elem, None) for name, elem in outputs], inits,
    )
    model = helper.make_model(graph, opset_imports=list(like.opset_import))
    model.ir_version = like.ir_version
    return model


def _joint(cuts: list[tuple[Cut, np.ndarray]], like: onnx.ModelProto, float64: bool):
    """One model computing every cut (names prefixed ``site<i>/``) and its feed: each cut's
    data input and float initializers (cast to float64 for the reference, ``float64``)."""
    nodes, inits, inputs, outputs, feed = [], [], [], [], {}
    for i, (c, x) in enumerate(cuts):
        prefix = f"site{i}/"
        n, t = _renamed(c, prefix)
        nodes += _float64_nodes(n) if float64 else n
        inits += [_to_float64(i) for i in t] if float64 else t
        elem = TensorProto.DOUBLE if float64 else helper.np_dtype_to_tensor_dtype(x.dtype)
        inputs.append((prefix + c.data, elem))
        outputs.append((prefix + c.output, elem))
        feed[prefix + c.data] = x
        for name, value in c.values.items():
            value = value.astype(np.float64) if float64 else value
            inputs.append((prefix + name, helper.np_dtype_to_tensor_dtype(value.dtype)))
            feed[prefix + name] = value
    return _model(nodes, inits, inputs, outputs, like), [name for name, _ in outputs], feed


def reference(c: Cut, like: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The original cut on ``x`` in float64 (onnx's numpy reference implementation)."""
    return _reference_together([(c, x)], like)[0]


def _reference_together(cuts: list[tuple[Cut, np.ndarray]], like: onnx.ModelProto) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator  # imported only when a site is proved

    model, names, feed = _joint(cuts, like, float64=True)
    return [np.asarray(r) for r in ReferenceEvaluator(model, new_ops=[_inference_bn()]).run(names, feed)]


def _inference_bn():
    """BatchNormalization for the reference run, in inference mode at every opset. onnx's own
    BatchNormalization_9 fills the ``momentum`` attribute with its schema default and then
    normalises with batch statistics, which an inference BN (opsets 9-13) never does."""
    from onnx.reference.op_run import OpRun  # imported only when a site is proved

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, spatial=None,
                 is_test=None, training_mode=None, consumed_inputs=None):
            shape = (1, -1) + (1,) * (x.ndim - 2)
            eps = 1e-5 if epsilon is None else float(epsilon)
            y = scale.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) + bias.reshape(shape)
            return (y.astype(x.dtype),)

    return BatchNormalization


@dataclass
class _Prepared:
    name: str
    old: Cut
    new: Cut
    x: np.ndarray
    dtype: np.dtype


def _prepare_all(old: _Graphs, new: _Graphs, name: str, seed: int) -> list[_Prepared]:
    """The site's cuts: the producer -> BN pair, or, for a BN folded into the ops after it
    (its output is gone from the folded graph), BN -> consumer for each of them (named
    ``name`` + :data:`_PART` + k, merged again by :func:`~bncheck.numerics.site_proof.worst_of`)."""
    found = old.find_bn(name)
    if found is None:
        raise NotIsolatable("its BatchNormalization node is not in the original graph")
    index, bn = found
    if new.with_output(bn.output[0]) is not None:
        return [_prepare(index, new, name, bn, seed)]
    consumers = [n for n in index.consumers.get(bn.output[0], []) if n.op_type in PRODUCERS]
    if not consumers:
        raise NotIsolatable(f"the folded graph does not compute {bn.output[0]}")
    return [_prepare_consumer(index, new, f"{name}{_PART}{k}", bn, node, seed) for k, node in enumerate(consumers)]


_PART = "\x00consumer"


def _prepare_consumer(index: GraphIndex, new: _Graphs, name: str, bn, node, seed: int) -> _Prepared:
    """BN -> ``node`` in the original against ``node`` on the BN input in the folded graph."""
    x = random_input(geometry(index, node), seed)
    out = node.output[0]
    if node.op_type == "MatMul":  # its Linear bias Add (or the Add the fold wrote) is part of the site
        readers = index.consumers.get(out, [])
        if len(readers) == 1 and readers[0].op_type == "Add" and out not in index.graph_outputs:
            out = readers[0].output[0]
    for _ in range(_MAX_WALK):  # the consumer also absorbed the BN after it: that one's output
        readers = index.consumers.get(out, [])
        if new.with_output(out) is not None or len(readers) != 1 or out in index.graph_outputs:
            break
        out = readers[0].output[0]
    target = new.with_output(out)
    if target is None:
        raise NotIsolatable(f"the folded graph does not compute {out}")
    elem = target.elem_type(bn.input[0]) or old_elem(index, node)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype("float32")
    return _Prepared(name, cut(index, bn.input[0], out), cut(target, bn.input[0], out), x, dtype)


def _prepare(index: GraphIndex, new: _Graphs, name: str, bn: onnx.NodeProto, seed: int) -> _Prepared:
    prod = find_producer(index, bn)
    data = _data_input(index, prod)
    if data is None:
        raise NotIsolatable(f"{prod.op_type} {prod.name} has no data input")
    before = index.producer.get(data)
    if new.with_output(data) is None and before is not None and before.op_type == "BatchNormalization":
        data = before.input[0]  # the producer absorbed the BN before it too: the site starts there
    x = random_input(geometry(index, prod), seed)
    target = new.with_output(bn.output[0])
    if target is None:
        raise NotIsolatable(f"the folded graph does not compute {bn.output[0]}")
    elem = target.elem_type(data) or old_elem(index, prod)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype("float32")
    return _Prepared(name, cut(index, data, bn.output[0]), cut(target, data, bn.output[0]), x, dtype)


def old_elem(index: GraphIndex, prod: onnx.NodeProto) -> int | None:
    """The producer's dtype, read from its weight."""
    weight = index.constant(prod.input[1]) if len(prod.input) > 1 else None
    return helper.np_dtype_to_tensor_dtype(weight.dtype) if weight is not None else None


def _run_folded(sites: list[_Prepared], like: onnx.ModelProto) -> dict[str, np.ndarray | str]:
    """Every folded cut in one onnxruntime session (one per site if the joint one fails)."""
    if not sites:
        return {}
    try:
        return _run_together(sites, like)
    except Exception:  # one bad cut: run them one by one to say which
        out: dict[str, np.ndarray | str] = {}
        for site in sites:
            try:
                out.update(_run_together([site], like))
            except Exception as exc:  # onnxruntime's own exception types
                out[site.name] = f"onnxruntime cannot run the folded op on its own ({type(exc).__name__}: {str(exc)[:160]})"
        return out


def _run_together(sites: list[_Prepared], like: onnx.ModelProto) -> dict[str, np.ndarray | str]:
    model, names, feed = _joint([(site.new, site.x.astype(site.dtype)) for site in sites], like, float64=False)
    session = open_session(model, optimize=False, threads=1)  # tiny ops
    results = session.run(names, feed)
    return {site.name: result for site, result in zip(sites, results, strict=True)}


def _references(sites: list[_Prepared], like: onnx.ModelProto) -> dict[str, np.ndarray | str]:
    """Every original cut in float64 in one reference evaluation (one by one if that fails, to
    say which site has no reference)."""
    try:
        results = _reference_together([(site.old, site.x) for site in sites], like)
        return {site.name: result for site, result in zip(sites, results, strict=True)}
    except Exception:  # the reference implementation lacks an op of some cut
        out: dict[str, np.ndarray | str] = {}
        for site in sites:
            try:
                out[site.name] = reference(site.old, like, site.x)
            except Exception as exc:
                out[site.name] = f"no float64 reference for the original pair ({type(exc).__name__}: {str(exc)[:120]})"
        return out


def prove_sites(original: onnx.ModelProto, folded: onnx.ModelProto, names: list[str], *,
                atol: float, rtol: float, seed: int = 0) -> dict[str, SiteProof]:
    """The proof of every folded BN named in ``names``."""
    old, new = _Graphs(original), _Graphs(folded)
    proofs: dict[str, SiteProof] = {}
    prepared = []
    for name in names:
        try:
            prepared += _prepare_all(old, new, name, seed)
        except NotIsolatable as exc:
            proofs[name] = unproved(name, f"not provable on its own: {exc}", METHOD, fails=False)
    got = _run_folded(prepared, folded)
    runnable = [site for site in prepared if not isinstance(got.get(site.name), str)]
    expected = _references(runnable, original)
    for site in prepared:
        result, ref = got.get(site.name), expected.get(site.name)
        if isinstance(result, str):
            proofs[site.name] = unproved(site.name, result, METHOD)
        elif isinstance(ref, str):
            proofs[site.name] = unproved(site.name, ref, METHOD, fails=False)
        else:
            proofs[site.name] = judge(site.name, ref, result, atol=atol, rtol=rtol, input_shape=site.x.shape, method=METHOD)
    parts: dict[str, list[SiteProof]] = {}
    for key in [k for k in proofs if _PART in k]:
        parts.setdefault(key.split(_PART)[0], []).append(proofs.pop(key))
    for name, group in parts.items():
        proofs[name] = worst_of(name, group, METHOD)
    return proofs
