"""The edits one ONNX fold makes to a graph: new initializers under fresh or reused names, the
BN nodes replaced, the chains that became dead removed and stale ``value_info`` dropped."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bncheck.backends.onnx.graph import GraphIndex, iter_graphs
from bncheck.backends.onnx.source import SHAPE_ONLY_OPS


class CannotFold(Exception):
    """A foldable-looking BN whose producer turns out not to be rewritable (a reason)."""


@dataclass
class Rewrite:
    """The edits for one BN node, applied after every BN has been planned."""

    bn: onnx.NodeProto
    #: nodes that take the BN node's place in the node list (empty: the BN is just removed)
    replacement: list[onnx.NodeProto] = field(default_factory=list)
    #: value names whose consumer went away (candidates for dead-code removal)
    released: list[str] = field(default_factory=list)
    #: nodes between the producer and the BN that the fold absorbed (look-through patterns)
    removed: list[onnx.NodeProto] = field(default_factory=list)
    #: (node, input position, new name): type/shape-only readers moved from the BN input to its output
    retargeted: list[tuple[onnx.NodeProto, int, str]] = field(default_factory=list)


class GraphEdits:
    """Parameter reads and writes on the main graph of ``model``, applied by :meth:`apply`."""

    def __init__(
        self, model: onnx.ModelProto, index: GraphIndex, *, graph: onnx.GraphProto | None = None, taken: set[str] | None = None
    ) -> None:
        self.model = model
        #: the graph edited: the main graph, or an If/Loop/Scan body (whose outer names stay)
        self.graph = model.graph if graph is None else graph
        self.is_main = self.graph is model.graph
        self.index = index
        self.taken = all_names(model) if taken is None else taken
        self.new_initializers: list[onnx.TensorProto] = []
        self.dropped_initializers: set[str] = set()
        #: names of the enclosing graphs this body no longer reads (pruned by the caller)
        self.released_outer: list[str] = []
        #: names the bodies below this graph read (made once, before :meth:`apply` edits)
        self._subgraph_reads: set[str] | None = None

    def param(self, node: onnx.NodeProto, i: int, *, optional: bool = False) -> np.ndarray | None:
        """The constant value of input ``i`` of ``node`` (None for a missing optional one)."""
        if i >= len(node.input) or not node.input[i]:
            if optional:
                return None
            raise CannotFold(f"{node.op_type} has no input {i}")
        value = self.index.constant(node.input[i])
        if value is None:
            raise CannotFold(f"{node.op_type} input {node.input[i]} is not a constant")
        return value

    def set_param(
        self, node: onnx.NodeProto, i: int, value: np.ndarray, rewrite: Rewrite, *, bias_of: str | None = None
    ) -> None:
        """Point input ``i`` of ``node`` at a new initializer holding ``value``.

        An initializer used by this node alone is replaced under its own name; a value from a
        constant chain (or a shared name) gets a fresh name and the old one is released."""
        old = node.input[i] if i < len(node.input) else ""
        own = {init.name for init in self.graph.initializer}
        if old and old in own and self._sole_user(old, node):
            self.dropped_initializers.add(old)
            self.new_initializers.append(numpy_helper.from_array(np.asarray(value), old))
            return
        label = node.name or node.output[0]
        preferred = bias_name(bias_of, label) if bias_of is not None else f"{old or node.name}.bn_folded"
        name = self.add_initializer(value, preferred)
        if old:
            rewrite.released.append(old)
            if old not in own and old in self.index.initializers:
                self.released_outer.append(old)
        while len(node.input) <= i:
            node.input.append("")
        node.input[i] = name

    def add_initializer(self, value: np.ndarray, preferred: str) -> str:
        """A new initializer holding ``value`` under a fresh name close to ``preferred``."""
        name = self.unique(preferred)
        self.new_initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def unique(self, preferred: str) -> str:
        """``preferred``, or ``preferred_<k>`` when taken; the name is then taken."""
        name, k = preferred, 1
        while name in self.taken:
            k += 1
            name = f"{preferred}_{k}"
        self.taken.add(name)
        return name

    def _sole_user(self, name: str, node: onnx.NodeProto) -> bool:
        users = [u for u in self.index.consumers.get(name, []) if u.op_type not in SHAPE_ONLY_OPS]
        return (
            all(u is node for u in users)
            and name not in self.index.graph_outputs
            and name not in self._read_by_subgraphs()
        )

    def _read_by_subgraphs(self) -> set[str]:
        if self._subgraph_reads is None:
            self._subgraph_reads = {i for path, g in iter_graphs(self.graph) if path for n in g.node for i in n.input}
        return self._subgraph_reads

    def apply(self, rewrites: dict[int, Rewrite]) -> None:
        """Replace the planned BN nodes (keyed by ``id(node)``), swap the initializers, then
        remove what became dead."""
        nodes: list[onnx.NodeProto] = []
        released: list[str] = []
        gone = {id(n) for r in rewrites.values() for n in r.removed}
        for node in self.graph.node:
            if id(node) in gone:
                continue
            rewrite = rewrites.get(id(node))
            if rewrite is None:
                nodes.append(node)
                continue
            nodes.extend(rewrite.replacement)
            released.extend(rewrite.released)
            for reader, position, name in rewrite.retargeted:
                reader.input[position] = name
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self._subgraph_reads = None
        self._swap_initializers()
        self._remove_dead(released)
        self._drop_stale_value_info()

    def _swap_initializers(self) -> None:
        """Replace the dropped initializers by their new values and add the new ones, in place:
        the untouched initializers (most of the model's bytes) are never copied."""
        graph = self.graph
        declared_inputs = {v.name for v in graph.input}
        as_inputs = self.is_main and (
            self.model.ir_version < 4
            or (len(graph.initializer) > 0 and all(i.name in declared_inputs for i in graph.initializer))
        )
        replacing = {i.name: i for i in self.new_initializers if i.name in self.dropped_initializers}
        positions = [k for k, init in enumerate(graph.initializer) if init.name in self.dropped_initializers]
        for k in reversed(positions):
            new = replacing.get(graph.initializer[k].name)
            if new is not None:
                graph.initializer[k].CopyFrom(new)
            else:
                del graph.initializer[k]
        graph.initializer.extend(i for i in self.new_initializers if i.name not in replacing)
        listed = {v.name: i for i, v in enumerate(graph.input)}
        for init in self.new_initializers:
            declared = helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            if init.name in listed:  # replaced in place: keep its input declaration in step
                graph.input[listed[init.name]].CopyFrom(declared)
            elif as_inputs:
                graph.input.append(declared)

    def _remove_dead(self, candidates: list[str]) -> None:
        """Remove the nodes and initializers that only fed what was folded away."""
        pending = list(dict.fromkeys(candidates))
        while pending:
            dead_nodes, dead_inits, next_pending = self._dead(pending)
            if not dead_nodes and not dead_inits:
                break
            dead = {id(d) for d in dead_nodes}
            keep = [n for n in self.graph.node if id(n) not in dead]
            del self.graph.node[:]
            self.graph.node.extend(keep)
            if dead_inits:
                _remove_initializers(self.graph, dead_inits)
            pending = list(dict.fromkeys(next_pending))

    def _dead(self, pending: list[str]) -> tuple[list[onnx.NodeProto], set[str], list[str]]:
        """Of the ``pending`` names nobody reads any more: their producer nodes (when none of
        their outputs is read), their initializers, and the producers' inputs to look at next."""
        used = _used_names(self.graph)
        producers = {o: n for n in self.graph.node for o in n.output if o}
        initializers = {i.name for i in self.graph.initializer}
        dead_nodes: list[onnx.NodeProto] = []
        dead_inits: set[str] = set()
        next_pending: list[str] = []
        for name in pending:
            if name in used:
                continue
            node = producers.get(name)
            if node is not None:
                if all(not o or o not in used for o in node.output) and all(n is not node for n in dead_nodes):
                    dead_nodes.append(node)
                    next_pending.extend(i for i in node.input if i)
            elif name in initializers:
                dead_inits.add(name)
        return dead_nodes, dead_inits, next_pending

    def _drop_stale_value_info(self) -> None:
        alive = {o for n in self.graph.node for o in n.output if o}
        alive |= {i.name for i in self.graph.initializer} | {v.name for v in self.graph.input}
        keep = [vi for vi in self.graph.value_info if vi.name in alive]
        if len(keep) != len(self.graph.value_info):
            del self.graph.value_info[:]
            self.graph.value_info.extend(keep)


def bias_name(weight_name: str | None, label: str) -> str:
    """``conv.bias`` next to ``conv.weight``, else ``<label>.bias``."""
    if weight_name and weight_name.endswith("weight"):
        return weight_name[: -len("weight")] + "bias"
    return f"{label}.bias"


def _remove_initializers(graph: onnx.GraphProto, names: set[str]) -> None:
    """Delete the initializers (and graph inputs) named ``names`` in place (no copy of the rest)."""
    for k in reversed([k for k, init in enumerate(graph.initializer) if init.name in names]):
        del graph.initializer[k]
    inputs = [v for v in graph.input if v.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every name taken in ``model``'s graphs (values, initializers, nodes)."""
    names: set[str] = set()
    for _, graph in iter_graphs(model.graph):
        names.update(i.name for i in graph.initializer)
        names.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        for node in graph.node:
            names.update(n for n in (*node.input, *node.output) if n)
            if node.name:
                names.add(node.name)
    return names


def prune_initializers(graph: onnx.GraphProto, candidates: list[str]) -> None:
    """Remove the ``candidates`` that are initializers of ``graph`` nobody reads any more (in
    ``graph`` or its bodies), e.g. weights a body's fold replaced by its own copies."""
    if not candidates:
        return
    used = _used_names(graph)
    _remove_initializers(graph, {n for n in candidates if n not in used} & {i.name for i in graph.initializer})


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Names read by any node of ``graph`` or of its subgraphs, and the graph outputs."""
    used = {o.name for o in graph.output}
    for _, g in iter_graphs(graph):
        for node in g.node:
            used.update(i for i in node.input if i)
        if g is not graph:
            used.update(o.name for o in g.output)
    return used

