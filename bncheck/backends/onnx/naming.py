"""Names in an ONNX graph: the model's are text, and the ones bncheck adds never clash with them."""

from __future__ import annotations

from collections.abc import Iterator

import onnx

from bncheck.backends.onnx.graph import iter_graphs
from bncheck.errors import ModelLoadError


def _names(model: onnx.ModelProto) -> Iterator[tuple[str, object]]:
    yield "the producer name", model.producer_name
    yield "the producer version", model.producer_version
    for path, graph in iter_graphs(model.graph):
        for kind, values in (("graph input", graph.input), ("graph output", graph.output), ("value_info", graph.value_info)):
            yield from ((f"a {kind} name in graph {path or '(main)'}", v.name) for v in values)
        yield from ((f"an initializer name in graph {path or '(main)'}", t.name) for t in graph.initializer)
        for i, node in enumerate(graph.node):
            where = f"node #{i} of graph {path or '(main)'}"
            yield f"the name of {where}", node.name
            yield f"the op type of {where}", node.op_type
            yield from ((f"an input or output name of {where}", v) for v in [*node.input, *node.output])


def check_names(model: onnx.ModelProto, path) -> None:
    """Every name bncheck reads is text: protobuf hands back ``bytes`` for a string field that is
    not valid UTF-8, which the ONNX spec forbids and which would reach reports as ``b'...'``."""
    for what, value in _names(model):
        if isinstance(value, bytes):
            raise ModelLoadError(
                f"{path}: {what} is not valid UTF-8 ({value[:40]!r}), which ONNX requires; the file is "
                "damaged or hostile: re-export the model."
            )


def check_wiring(model: onnx.ModelProto, path) -> None:
    """Every value a node reads is provided: by a node, a graph input or an initializer (of its
    graph or an enclosing one: names anywhere in the model count, so outer-scope reads pass).
    onnxruntime refuses such a graph; bncheck would otherwise fold or measure a BN whose input
    does not exist."""
    graphs = [graph for _, graph in iter_graphs(model.graph)]
    provided = {""}  # an empty name is an omitted optional input
    for graph in graphs:
        provided.update(v.name for v in graph.input)
        provided.update(t.name for t in graph.initializer)
        provided.update(t.values.name for t in graph.sparse_initializer)
        for node in graph.node:
            provided.update(node.output)
    for graph in graphs:
        for i, node in enumerate(graph.node):
            missing = next((v for v in node.input if v not in provided), None)
            if missing is not None:
                raise ModelLoadError(
                    f"{path}: node {node.name or f'#{i}'!r} ({node.op_type}) reads {missing!r}, which no node, "
                    "graph input or initializer provides; the graph is broken: re-export the model."
                )


class NameMaker:
    """Unique value-name prefixes (``bncheck/<n>/<label>/``) for the nodes bncheck adds."""

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
        """A prefix no value of the model (nor an earlier prefix) starts with."""
        while True:
            self._count += 1
            prefix = f"bncheck/{self._count}/{label}/"
            if not any(name.startswith(prefix) for name in self._used):
                self._used.add(prefix)
                return prefix
