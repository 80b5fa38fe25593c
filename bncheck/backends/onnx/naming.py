"""Names for the values bncheck adds to an ONNX graph, never clashing with the model's."""

from __future__ import annotations

import onnx


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
