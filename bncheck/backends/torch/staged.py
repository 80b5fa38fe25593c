"""An eager ``nn.Module`` cut into the segments of the layer-by-layer exact estimate
(:mod:`bncheck.numerics.stages`) through its torch.fx trace: each segment is a GraphModule of
its own whose inputs are the frontier entering it and whose outputs are the values the next
segments read. The runner's copy of the model carries the statistics (written into its BN
buffers level by level); the stored model is never touched.

Models that cannot be cut this way get ``None`` and a reason (TorchScript and torch.export
programs, untraceable code, functional batch_norm layers, a BN module called more than once,
in-place ops on a value that something else also reads)."""

from __future__ import annotations

import copy
import operator
from typing import Any

import numpy as np
import torch
from torch import fx
from torch.utils._pytree import tree_leaves

from bncheck.backends.staged import Frontier, StagedModel, run_failed
from bncheck.backends.torch.graph import drop_default_guards, trace_with_defaults
from bncheck.backends.torch.runner import channel_moments
from bncheck.backends.torch.tensors import param_dtype_device
from bncheck.numerics.moments import Moments
from bncheck.numerics.stages import Op, StagePlan, plan_stages

_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m, qualname):
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def fx_staged(source, layers: list[str]) -> tuple[StagedModel | None, str]:
    """The staged form of ``source`` estimating ``layers``, or (None, why not)."""
    if source.format not in ("state_dict", "pickle", "module"):
        return None, f"a {source.format} model has no torch.fx graph to cut"
    bn = {la.name: la for la in source.bn_layers()}
    if any(bn[n].kind == "functional batch_norm" or n == "<root>" for n in layers):
        return None, "functional batch_norm layers have no module to cut at"
    module = copy.deepcopy(source.module).eval()
    try:
        graph = drop_default_guards(trace_with_defaults(_LeafTracer(set(bn)), module))
    except Exception as exc:  # torch.fx raises many kinds of errors on untraceable code
        return None, f"torch.fx cannot trace the model ({type(exc).__name__})"
    root = fx.GraphModule(module, graph)
    plan, why = _plan(root, graph, set(layers))
    if plan is None:
        return None, why
    return FxStaged(root, module, plan, getattr(source, "device", "cpu")), ""


def _plan(root, graph: fx.Graph, layers: set[str]) -> tuple[StagePlan | None, str]:
    modules = dict(root.named_modules())
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders or any(n.users for n in placeholders[1:]):
        return None, "the model reads more than one input"
    ops, seen = [], set()
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        layer = node.target if node.op == "call_module" and node.target in layers else None
        if layer is not None:
            if layer in seen or not node.args or not isinstance(node.args[0], fx.Node):
                return None, f"BN module {layer} is called more than once or not on a tensor"
            seen.add(layer)
        if _inplace(node, modules) and len(node.args[0].users) > 1:
            return None, f"{node.name} writes in place a value other ops read"
        ops.append(Op(node, tuple(node.all_input_nodes), (node,), layer))
    if seen != layers:
        return None, f"BN layer(s) {', '.join(sorted(layers - seen)[:3])} are not module calls of the traced graph"
    ends = [n for n in tree_leaves(next(n for n in graph.nodes if n.op == "output").args) if isinstance(n, fx.Node)][:1]
    return plan_stages(ops, [placeholders[0]], outputs=tuple(ends)), ""


def _inplace(node, modules) -> bool:
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_module":
        return bool(getattr(modules.get(node.target), "inplace", False))
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).startswith("_")
    return node.target in _INPLACE_FUNCTIONS or bool(node.kwargs.get("inplace", False))


class FxStaged(StagedModel):
    def __init__(self, root: fx.GraphModule, module, plan: StagePlan, device: str) -> None:
        self.plan = plan
        self._module = module
        self._modules = dict(module.named_modules())
        self._dtype, _ = param_dtype_device(module)
        self._device = torch.device(device)
        module.to(self._device)
        static = set(plan.static)
        self._segments = [_segment(root, plan, k, static) for k in range(len(plan.frontiers) - 1)]  # the tail too, with outputs

    def set_statistics(self, stats) -> None:
        with torch.no_grad():
            for name, (mean, var) in stats.items():
                bn = self._modules[name]
                bn.running_mean.copy_(torch.as_tensor(np.asarray(mean, np.float64), dtype=bn.running_mean.dtype))
                bn.running_var.copy_(torch.as_tensor(np.asarray(var, np.float64), dtype=bn.running_var.dtype))

    def start(self, x: np.ndarray) -> Frontier:
        tensor = torch.from_numpy(np.ascontiguousarray(x)).to(device=self._device, dtype=self._dtype)
        try:
            return self._run(0, {self.plan.frontiers[0][0]: tensor})
        except Exception as exc:  # whatever the model raises on a bad batch
            raise run_failed(exc, x) from exc

    def advance(self, k: int, frontier: Frontier) -> Frontier:
        return self._run(k, frontier)

    def _run(self, k: int, frontier: Frontier) -> Frontier:
        produced = self.plan.produced(k)
        with torch.inference_mode():
            values = self._segments[k](*[frontier[v] for v in self.plan.frontiers[k]])
        out = dict(zip(produced, values, strict=True))
        return {v: out[v] if v in out else frontier[v] for v in self.plan.frontiers[k + 1]}

    def _array(self, value) -> np.ndarray | None:
        """A tensor as the torch runner returns it (half precision as float32); None otherwise."""
        if not isinstance(value, torch.Tensor):
            return None
        value = value.detach().cpu()
        return (value.float() if value.dtype in (torch.float16, torch.bfloat16) else value).numpy()

    def moments(self, k: int, frontier: Frontier) -> dict[str, Moments]:
        out = {}
        for name in self.plan.levels[k - 1]:
            x = frontier[self.plan.bn_input[name]]
            if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.numel() == 0:
                continue
            with torch.inference_mode():
                count, mean, m2 = channel_moments(x)
            out[name] = Moments.from_batch(count, mean.detach().to("cpu", torch.float64).numpy(), m2.detach().to("cpu", torch.float64).numpy())
        return out

    def nbytes(self, frontier: Frontier) -> int:
        seen: dict[int, int] = {}
        for t in frontier.values():
            if isinstance(t, torch.Tensor):
                seen[id(t)] = t.element_size() * t.numel()
        return sum(seen.values())

    def close(self) -> None:
        self._segments = []


def _segment(root: fx.GraphModule, plan: StagePlan, k: int, static: set) -> fx.GraphModule:
    """Segment ``k`` as a GraphModule: frontier ``k`` in, the values of frontier ``k + 1`` it
    computes out (a tuple), the static ops it reads recomputed in it."""
    ops = set(plan.segments[k])
    needed: set[Any] = set()
    for node in reversed(list(root.graph.nodes)):
        if node in ops or node in needed:
            needed.update(n for n in node.all_input_nodes if n in static)
    graph = fx.Graph()
    env: dict[Any, Any] = {}
    for i, value in enumerate(plan.frontiers[k]):
        env[value] = graph.placeholder(f"frontier_{i}")
    for node in root.graph.nodes:
        if node in needed or node in ops:
            env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(tuple(env[v] for v in plan.produced(k)))
    return fx.GraphModule(root, graph)
