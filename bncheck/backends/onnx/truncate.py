"""The part of an ONNX graph that the outputs of a few BN layers need: the model cut right after
those BatchNormalization nodes, for the input diagnosis of ``bncheck drift`` (BN103), which
only looks at the BN layers nearest the input and has no use for the rest of the network."""

from __future__ import annotations

import onnx
from onnx import helper

from bncheck.backends.onnx.bn_nodes import bn_node_indices
from bncheck.backends.onnx.graph import value_types
from bncheck.errors import UsageError


def subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Every value a node's subgraphs (If/Loop/Scan bodies) read from the enclosing graph."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
        for graph in graphs:
            local = {i.name for i in graph.input} | {i.name for i in graph.initializer}
            for inner in graph.node:
                local.update(inner.output)
            for inner in graph.node:
                names.update(v for v in inner.input if v and v not in local)
                names.update(v for v in subgraph_inputs(inner) if v not in local)
    return names


def kept_nodes(graph: onnx.GraphProto, layers: list[str]) -> tuple[list[int], set[int], set[str]]:
    """The indices of the BatchNormalization nodes of ``layers``, of every node their outputs
    depend on (them included), and the values read on the way (UsageError where none of
    ``layers`` is a BN node of the main graph)."""
    indices = bn_node_indices(graph)
    wanted = [indices[name] for name in layers if name in indices]
    if not wanted:
        raise UsageError("none of the BN layers to cut the model after is a BatchNormalization node of its main graph.")
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    keep: set[int] = set(wanted)
    stack = [v for i in wanted for v in graph.node[i].input if v]
    seen: set[str] = set()
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        index = producer.get(value)
        if index is None or index in keep:
            continue
        keep.add(index)
        node = graph.node[index]
        stack.extend(v for v in node.input if v)
        stack.extend(subgraph_inputs(node))
    return wanted, keep, seen


def truncated_model(model: onnx.ModelProto, layers: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are the first outputs of the BatchNormalization nodes of
    ``layers`` (named as ``bn_layers`` names them), holding only the nodes and initializers
    those outputs depend on. The nodes keep their names, so the BN layers keep theirs."""
    graph = model.graph
    wanted, keep, seen = kept_nodes(graph, layers)
    nodes = [graph.node[i] for i in sorted(keep)]
    used = seen | {v for node in nodes for v in node.input}
    # one scalar output (the mean of the first layer's output): the runner observes the BN
    # inputs through its own reductions and never copies a whole activation out
    first = graph.node[wanted[0]].output[0]
    elem = (value_types(model).get(first) or (onnx.TensorProto.FLOAT, None))[0] or onnx.TensorProto.FLOAT
    output = first + "/bncheck_truncated"
    nodes.append(helper.make_node("ReduceMean", [first], [output], keepdims=0))
    outputs = [helper.make_tensor_value_info(output, elem, [])]
    sub = helper.make_graph(
        nodes,
        graph.name + "_truncated",
        [i for i in graph.input if i.name in used or i.name not in {init.name for init in graph.initializer}],
        outputs,
        initializer=[init for init in graph.initializer if init.name in used],
        value_info=[vi for vi in graph.value_info if vi.name in used],
    )
    out = helper.make_model(sub, opset_imports=list(model.opset_import), producer_name=model.producer_name)
    out.ir_version = model.ir_version
    out.functions.extend(model.functions)
    return out
