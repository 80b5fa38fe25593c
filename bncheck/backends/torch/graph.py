"""Who feeds each BN layer of an nn.Module, for the inventory: its torch.fx trace, its exact
``nn.Sequential`` patterns when it cannot be traced, or its TorchScript graphs.

The answer comes from the dataflow graph, never from the order of ``named_modules()``.
Each function returns ``{bn_name: Producer}``; a BN layer missing from the mapping has an
unknown producer. FX nodes are classified by the one producer finder,
:func:`~bncheck.backends.torch.producers.producer_call`.
"""

from __future__ import annotations

import inspect
import operator
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import fx

from bncheck.backends.torch.ops import F_BN_ARGS
from bncheck.backends.torch.producers import (
    Producer,
    module_kind,
    producer_call,
    shared_weight_blocker,
)


@dataclass
class FunctionalBN:
    """A ``F.batch_norm`` call whose statistics are not held by a BN-like module."""

    name: str
    running_mean: str | None
    running_var: str | None
    weight: str | None
    bias: str | None
    training: bool
    momentum: float | None
    eps: float
    producer: Producer


class _InventoryTracer(fx.Tracer):
    """BN-like modules stay single call_module nodes (a frozen BN's arithmetic would
    otherwise be traced through and its call lost)."""

    def __init__(self, bn_names: set[str]):
        super().__init__()
        self.bn_names = bn_names

    def is_leaf_module(self, m, qualname):
        return qualname in self.bn_names or super().is_leaf_module(m, qualname)


class _FxProducers:
    """The producers of the BN calls of one traced module."""

    def __init__(self, root, graph: fx.Graph):
        self.root = root
        self.calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
        self.modules = dict(root.named_modules())

    def producer_of(self, node, bn_name: str, num_features: int | None) -> Producer:
        if node.op == "placeholder":
            return Producer(name=node.name, kind="input")
        call = producer_call(node, self.modules)
        if call is not None and call.module_path is not None:
            return self._module_producer(node, call.kind, bn_name, num_features)
        if call is not None and node.op == "call_function":
            return self._functional_producer(node, call)
        label = node.target if node.op == "call_module" else getattr(node.target, "__name__", str(node.target))
        return Producer(name=str(label), kind="other")

    def _module_producer(self, node, kind: str, bn_name: str, num_features: int | None) -> Producer:
        blockers = []
        if len(node.users) > 1:
            others = [u.name for u in node.users if u.name != bn_name]
            blockers.append(f"{node.target} output is also used by {', '.join(others[:3])}")
        if self.calls[node.target] > 1:
            blockers.append(f"{node.target} is called {self.calls[node.target]} times")
        shared = shared_weight_blocker(self.root, node.target)
        if shared:
            blockers.append(shared)
        out_features = getattr(self.modules[node.target], "out_features", None)
        if kind == "linear" and num_features and out_features not in (None, num_features):
            blockers.append("linear output size differs from the BN channel count")
        return Producer(name=node.target, kind=kind, blockers=blockers)

    @staticmethod
    def _functional_producer(node, call) -> Producer:
        weight = call.weight
        is_param = getattr(weight, "op", "") == "get_attr"
        name = weight.target.rsplit(".", 1)[0] if is_param else node.name
        blockers = []
        if len(node.users) > 1:
            blockers.append(f"{node.name} output is also used elsewhere")
        if not is_param:
            blockers.append("the weight is computed, not a parameter")
        elif len(weight.users) > 1:
            blockers.append(f"{weight.target} is used by more than one op")
        return Producer(name=name, kind=call.kind, blockers=blockers)


def default_arguments(root) -> dict:
    """``forward``'s arguments that have defaults (``embed=False``), with those defaults."""
    try:
        params = inspect.signature(root.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


def trace_with_defaults(tracer: fx.Tracer, root) -> fx.Graph:
    """``tracer.trace(root)``; if that fails, again with ``forward``'s defaulted arguments fixed
    to their defaults (``concrete_args``), which takes a Python ``if`` on them out of the graph.
    Raises what the first trace raised when the second fails too."""
    try:
        return tracer.trace(root)
    except Exception as first:  # torch.fx raises many kinds of errors on untraceable code
        defaults = default_arguments(root)
        if not defaults:
            raise
        try:
            return tracer.trace(root, concrete_args=defaults)
        except Exception:
            raise first from None


def drop_default_guards(graph: fx.Graph) -> fx.Graph:
    """``graph`` without the checks torch.fx adds for each argument fixed by ``concrete_args``
    (``_assert(arg == default)``, see :func:`trace_with_defaults`), so that those arguments'
    placeholders are read by nothing: for code that runs the graph on its first input alone
    (torchcrepe's ``forward(x, embed=False)``). In place; returns ``graph``."""
    for placeholder in [n for n in graph.nodes if n.op == "placeholder"][1:]:
        for check in list(placeholder.users):
            guards = list(check.users)
            if check.target is operator.eq and guards and all(g.target is torch._assert and not g.users for g in guards):
                for guard in guards:
                    graph.erase_node(guard)
                graph.erase_node(check)
    return graph


def fx_producers(root, bn_names: set[str]) -> tuple[dict[str, Producer], list[FunctionalBN]]:
    """Trace ``root`` with torch.fx and find the producer of every BN call.

    Raises whatever torch.fx raises when the model cannot be traced.
    """
    graph = trace_with_defaults(_InventoryTracer(bn_names), root)
    finder = _FxProducers(root, graph)
    found: dict[str, Producer] = {}
    functional: list[FunctionalBN] = []

    def add(owner: str, prod: Producer) -> None:
        if owner in found:
            found[owner].blockers.append(f"{owner} is called more than once")
        else:
            found[owner] = prod

    for node in graph.nodes:
        if node.op == "call_module" and node.target in bn_names:
            if node.target in found:
                found[node.target].blockers.append(f"{node.target} is called more than once")
                continue
            bn = finder.modules[node.target]
            prod = finder.producer_of(node.args[0], node.name, getattr(bn, "num_features", None))
            prod.bn_node = node.name
            found[node.target] = prod
        elif node.op == "call_function" and node.target in (F.batch_norm, torch.batch_norm):
            args = _bind_functional_bn(node)
            owner = _owner_of(args.get("running_mean")) or _owner_of(args.get("weight"))
            if owner in bn_names:  # a BN-like module traced through (e.g. BatchNormAct2d)
                prod = finder.producer_of(args["input"], node.name, getattr(finder.modules[owner], "num_features", None))
                prod.bn_node = node.name
                add(owner, prod)
                continue
            prod = finder.producer_of(args["input"], node.name, None)
            prod.bn_node = node.name
            functional.append(_functional_bn(node, owner, args, prod))
    return found, functional


def _functional_bn(node, owner: str | None, args: dict, prod: Producer) -> FunctionalBN:
    return FunctionalBN(
        name=f"{owner}.{node.name}" if owner else node.name,
        running_mean=_target(args.get("running_mean")),
        running_var=_target(args.get("running_var")),
        weight=_target(args.get("weight")),
        bias=_target(args.get("bias")),
        training=bool(args.get("training", False)),
        momentum=args.get("momentum", 0.1),
        eps=float(args.get("eps", 1e-5)),
        producer=prod,
    )


def _bind_functional_bn(node) -> dict:
    bound = dict(zip(F_BN_ARGS, node.args, strict=False))  # trailing arguments may be defaulted
    bound.update(node.kwargs)
    return bound


def _owner_of(arg) -> str | None:
    if getattr(arg, "op", None) == "get_attr":
        return arg.target.rsplit(".", 1)[0] if "." in arg.target else ""
    return None


def _target(arg) -> str | None:
    return arg.target if getattr(arg, "op", None) == "get_attr" else None


def sequential_producers(root, bn_names: set[str]) -> dict[str, Producer]:
    """Producers that are certain without tracing: a conv/linear directly before a BN in an
    ``nn.Sequential`` (whose forward is known to chain its children)."""
    found: dict[str, Producer] = {}
    all_names = Counter(id(m) for _, m in root.named_modules(remove_duplicate=False))
    for seq_name, seq in root.named_modules():
        if type(seq) is not torch.nn.Sequential:
            continue
        children = list(seq.named_children())
        for (prev_name, prev), (child_name, _child) in pairwise(children):
            full = f"{seq_name}.{child_name}" if seq_name else child_name
            if full not in bn_names:
                continue
            kind = module_kind(prev)
            prev_full = f"{seq_name}.{prev_name}" if seq_name else prev_name
            if kind is None:
                found[full] = Producer(name=prev_full, kind="other")
                continue
            blockers = []
            if all_names[id(prev)] > 1:
                blockers.append(f"{prev_full} is registered more than once (may be called twice)")
            shared = shared_weight_blocker(root, prev_full)
            if shared:
                blockers.append(shared)
            found[full] = Producer(name=prev_full, kind=kind, blockers=blockers)
    return found


def _script_edges(module, path: str, bn_names: set[str], calls: Counter, edges: dict) -> None:
    """Walk one TorchScript module's ``forward`` graph: count the child calls, and record for
    each BN child (source module of its input, kind of the node making it, its number of uses)."""
    try:
        graph = module.graph
    except (AttributeError, RuntimeError):
        return
    inputs = list(graph.inputs())
    if not inputs:
        return
    value_path = {inputs[0].debugName(): path}
    callee_of_value: dict[str, str] = {}
    for node in graph.nodes():
        kind = node.kind()
        if kind == "prim::GetAttr":
            base = node.inputsAt(0).debugName()
            if base in value_path:
                attr = node.s("name")
                prefix = value_path[base]
                value_path[node.output().debugName()] = f"{prefix}.{attr}" if prefix else attr
        elif kind == "prim::CallMethod" and node.s("name") == "forward":
            callee = value_path.get(node.inputsAt(0).debugName())
            if callee is None:
                continue
            calls[callee] += 1
            callee_of_value[node.output().debugName()] = callee
            if callee in bn_names and node.inputsSize() > 1:
                arg = node.inputsAt(1)
                edges[callee] = (callee_of_value.get(arg.debugName()), arg.node().kind(), len(arg.uses()))


def script_producers(root, bn_names: set[str]) -> dict[str, Producer]:
    """Producers from the graphs of a TorchScript module (scripted or traced).

    Every module's ``forward`` graph calls its children through ``prim::GetAttr`` +
    ``prim::CallMethod``; a BN child whose input is the output of a conv/linear child's call
    is fed by it.
    """
    modules = dict(root.named_modules())
    calls: Counter[str] = Counter()
    edges: dict[str, tuple[str | None, str, int]] = {}
    for path, module in modules.items():
        _script_edges(module, path, bn_names, calls, edges)
    found: dict[str, Producer] = {}
    for bn, (src, node_kind, uses) in edges.items():
        found[bn] = _script_producer(root, modules, src, node_kind, uses, calls)
    for bn in found:
        if calls[bn] > 1:
            found[bn].blockers.append(f"{bn} is called {calls[bn]} times")
    return found


def _script_producer(root, modules: dict, src: str | None, node_kind: str, uses: int, calls: Counter) -> Producer:
    if src is None:
        label = "input" if node_kind == "prim::Param" else node_kind.split("::")[-1]
        return Producer(name=None if label == "input" else label, kind="input" if label == "input" else "other")
    kind = module_kind(modules.get(src))
    if kind is None:
        return Producer(name=src, kind="other")
    blockers = []
    if uses > 1:
        blockers.append(f"{src} output is also used elsewhere")
    if calls[src] > 1:
        blockers.append(f"{src} is called {calls[src]} times")
    shared = shared_weight_blocker(root, src)
    if shared:
        blockers.append(shared)
    return Producer(name=src, kind=kind, blockers=blockers)
