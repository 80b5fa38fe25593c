"""Size figures of a torch model before and after a fold: stored tensor elements and graph ops."""

from __future__ import annotations

import torch
from torch import fx, nn


def parameter_count(obj) -> int:
    """Elements of every stored tensor (parameters and buffers; frozen TorchScript: constants)."""
    if hasattr(obj, "graph_signature"):  # ExportedProgram
        return sum(t.numel() for t in obj.state_dict.values()) + sum(
            t.numel() for t in obj.constants.values() if isinstance(t, torch.Tensor)
        )
    total = sum(t.numel() for t in obj.state_dict().values() if isinstance(t, torch.Tensor))
    if isinstance(obj, torch.jit.ScriptModule) and total == 0:
        for node in obj.graph.findAllNodes("prim::Constant"):
            value = node.output().toIValue() if node.output().type().kind() == "TensorType" else None
            if isinstance(value, torch.Tensor):
                total += value.numel()
    return total


def node_count(obj) -> int | None:
    """Ops in the model's graph: FX/export call nodes, TorchScript ops (inlined), or leaf
    modules when there is no graph."""
    if hasattr(obj, "graph_signature"):
        return sum(1 for n in obj.graph.nodes if n.op == "call_function")
    if isinstance(obj, fx.GraphModule):
        modules = dict(obj.named_modules())
        return sum(
            1
            for n in obj.graph.nodes
            if n.op in ("call_function", "call_method")
            or (n.op == "call_module" and not isinstance(modules.get(n.target), nn.Identity))
        )
    if isinstance(obj, torch.jit.ScriptModule):
        try:
            graph = obj.inlined_graph
        except RuntimeError:
            return None
        return sum(1 for n in graph.nodes() if not n.kind().startswith("prim::"))
    try:
        gm = fx.symbolic_trace(obj)
    except Exception:
        return sum(1 for m in obj.modules() if not list(m.children()) and not isinstance(m, nn.Identity))
    return node_count(gm)
