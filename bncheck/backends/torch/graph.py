"""Who feeds each BN layer in a PyTorch model: FX graphs, TorchScript graphs, torch.export graphs.

The answer comes from the dataflow graph, never from the order of ``named_modules()``.
Each function returns ``{bn_name: Producer}``; a BN layer missing from the mapping has an
unknown producer.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

from bncheck.layer import FOLDABLE_PRODUCERS


@dataclass
class Producer:
    """The op whose output a BN layer normalises, and whether folding into it is safe."""

    name: str | None
    kind: str  # conv | convtranspose | linear | input | other
    #: reasons why folding is unsafe (empty: foldable as far as the graph is concerned)
    blockers: list[str] = field(default_factory=list)
    #: graph node of the BN call (FX node name / TorchScript value), for later stages
    bn_node: str | None = None

    @property
    def foldable(self) -> bool:
        return self.kind in FOLDABLE_PRODUCERS and not self.blockers


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


def module_kind(module) -> str | None:
    """conv / convtranspose / linear for producer modules (eager or TorchScript), else None."""
    name = getattr(module, "original_name", None) or type(module).__name__
    name = name.replace("Lazy", "")
    if name in ("Conv1d", "Conv2d", "Conv3d"):
        return "conv"
    if name in ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"):
        return "convtranspose"
    if name == "Linear":
        return "linear"
    return None


def _shared_weight_blocker(root, module_name: str) -> str | None:
    """A reason when the producer's weight tensor is also held by another module."""
    module = dict(root.named_modules()).get(module_name)
    if module is None:
        return None
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    holders = [
        name
        for name, param in root.named_parameters(remove_duplicate=False)
        if param is weight and not name.startswith(module_name + ".") and name != module_name
    ]
    if holders:
        return f"{module_name}.weight is shared with {holders[0]}"
    return None


# --------------------------------------------------------------------------- FX (nn.Module)


def fx_producers(root, bn_names: set[str]) -> tuple[dict[str, Producer], list[FunctionalBN]]:
    """Trace ``root`` with torch.fx and find the producer of every BN call.

    Raises whatever torch.fx raises when the model cannot be traced.
    """
    import torch
    import torch.nn.functional as F
    from torch import fx

    class _Tracer(fx.Tracer):
        # BN-like modules stay single call_module nodes (a frozen BN's arithmetic would
        # otherwise be traced through and its call lost).
        def is_leaf_module(self, m, qualname):
            return qualname in bn_names or super().is_leaf_module(m, qualname)

    graph = _Tracer().trace(root)
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    modules = dict(root.named_modules())
    found: dict[str, Producer] = {}
    functional: list[FunctionalBN] = []

    def producer_of(node, bn_name: str, num_features: int | None) -> Producer:
        if node.op == "placeholder":
            return Producer(name=node.name, kind="input")
        if node.op == "call_module":
            kind = module_kind(modules.get(node.target))
            if kind is None:
                return Producer(name=node.target, kind="other")
            blockers = []
            if len(node.users) > 1:
                others = [u.name for u in node.users if u.name != bn_name]
                blockers.append(f"{node.target} output is also used by {', '.join(others[:3])}")
            if calls[node.target] > 1:
                blockers.append(f"{node.target} is called {calls[node.target]} times")
            shared = _shared_weight_blocker(root, node.target)
            if shared:
                blockers.append(shared)
            producer_module = modules[node.target]
            out_features = getattr(producer_module, "out_features", None)
            if kind == "linear" and num_features and out_features not in (None, num_features):
                blockers.append("linear output size differs from the BN channel count")
            return Producer(name=node.target, kind=kind, blockers=blockers)
        if node.op == "call_function" and node.target in _functional_producer_table():
            kind = _functional_producer_table()[node.target]
            weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            name = weight.target.rsplit(".", 1)[0] if getattr(weight, "op", "") == "get_attr" else node.name
            blockers = []
            if len(node.users) > 1:
                blockers.append(f"{node.name} output is also used elsewhere")
            if getattr(weight, "op", "") != "get_attr":
                blockers.append("the weight is computed, not a parameter")
            elif len(weight.users) > 1:
                blockers.append(f"{weight.target} is used by more than one op")
            return Producer(name=name, kind=kind, blockers=blockers)
        label = node.target if node.op == "call_module" else getattr(node.target, "__name__", str(node.target))
        return Producer(name=str(label), kind="other")

    for node in graph.nodes:
        if node.op == "call_module" and node.target in bn_names:
            bn = modules[node.target]
            if node.target in found:
                found[node.target].blockers.append(f"{node.target} is called more than once")
                continue
            prod = producer_of(node.args[0], node.name, getattr(bn, "num_features", None))
            prod.bn_node = node.name
            found[node.target] = prod
        elif node.op == "call_function" and node.target in (F.batch_norm, torch.batch_norm):
            args = _bind_functional_bn(node)
            owner = _owner_of(args.get("running_mean")) or _owner_of(args.get("weight"))
            inp = args["input"]
            if owner in bn_names:  # a BN-like module traced through (e.g. BatchNormAct2d)
                prod = producer_of(inp, node.name, getattr(modules[owner], "num_features", None))
                prod.bn_node = node.name
                if owner in found:
                    found[owner].blockers.append(f"{owner} is called more than once")
                else:
                    found[owner] = prod
                continue
            prod = producer_of(inp, node.name, None)
            prod.bn_node = node.name
            functional.append(
                FunctionalBN(
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
            )
    return found, functional


def _bind_functional_bn(node) -> dict:
    names = ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"]
    bound = dict(zip(names, node.args))
    bound.update(node.kwargs)
    return bound


def _owner_of(arg) -> str | None:
    if getattr(arg, "op", None) == "get_attr":
        return arg.target.rsplit(".", 1)[0] if "." in arg.target else ""
    return None


def _target(arg) -> str | None:
    return arg.target if getattr(arg, "op", None) == "get_attr" else None


@functools.lru_cache(maxsize=1)
def _functional_producer_table() -> dict:
    import torch
    import torch.nn.functional as F

    return {
        F.conv1d: "conv",
        F.conv2d: "conv",
        F.conv3d: "conv",
        torch.conv1d: "conv",
        torch.conv2d: "conv",
        torch.conv3d: "conv",
        F.conv_transpose1d: "convtranspose",
        F.conv_transpose2d: "convtranspose",
        F.conv_transpose3d: "convtranspose",
        F.linear: "linear",
    }


# --------------------------------------------------- exact module patterns (untraceable models)


def sequential_producers(root, bn_names: set[str]) -> dict[str, Producer]:
    """Producers that are certain without tracing: a conv/linear directly before a BN in an
    ``nn.Sequential`` (whose forward is known to chain its children)."""
    import torch

    found: dict[str, Producer] = {}
    all_names = Counter(id(m) for _, m in root.named_modules(remove_duplicate=False))
    for seq_name, seq in root.named_modules():
        if type(seq) is not torch.nn.Sequential:
            continue
        children = list(seq.named_children())
        for (prev_name, prev), (child_name, _child) in zip(children, children[1:]):
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
            shared = _shared_weight_blocker(root, prev_full)
            if shared:
                blockers.append(shared)
            found[full] = Producer(name=prev_full, kind=kind, blockers=blockers)
    return found


# --------------------------------------------------------------------------- TorchScript


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
        try:
            graph = module.graph
        except (AttributeError, RuntimeError):
            continue
        inputs = list(graph.inputs())
        if not inputs:
            continue
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
                out = node.output().debugName()
                callee_of_value[out] = callee
                if callee in bn_names and node.inputsSize() > 1:
                    arg = node.inputsAt(1)
                    src = callee_of_value.get(arg.debugName())
                    edges[callee] = (src, arg.node().kind(), len(arg.uses()))
    found: dict[str, Producer] = {}
    for bn, (src, node_kind, uses) in edges.items():
        if src is None:
            label = "input" if node_kind == "prim::Param" else node_kind.split("::")[-1]
            found[bn] = Producer(name=None if label == "input" else label, kind="input" if label == "input" else "other")
            continue
        kind = module_kind(modules.get(src))
        if kind is None:
            found[bn] = Producer(name=src, kind="other")
            continue
        blockers = []
        if uses > 1:
            blockers.append(f"{src} output is also used elsewhere")
        if calls[src] > 1:
            blockers.append(f"{src} is called {calls[src]} times")
        shared = _shared_weight_blocker(root, src)
        if shared:
            blockers.append(shared)
        found[bn] = Producer(name=src, kind=kind, blockers=blockers)
    for bn in found:
        if calls[bn] > 1:
            found[bn].blockers.append(f"{bn} is called {calls[bn]} times")
    return found


# --------------------------------------------------------------------------- torch.export

#: aten batch-norm ops and the positions of (weight, bias, mean, var, training, momentum, eps)
EXPORT_BN_OPS = {
    "aten.batch_norm.default": (1, 2, 3, 4, 5, 6, 7),
    "aten._native_batch_norm_legit_no_training.default": (1, 2, 3, 4, None, 5, 6),
    "aten._native_batch_norm_legit_functional.default": (1, 2, 3, 4, 5, 6, 7),
    "aten._native_batch_norm_legit.default": (1, 2, 3, 4, 5, 6, 7),
    "aten.native_batch_norm.default": (1, 2, 3, 4, 5, 6, 7),
    "aten.cudnn_batch_norm.default": (1, 2, 3, 4, 5, 6, 7),
}

EXPORT_PRODUCER_OPS = {
    "aten.conv1d.default": "conv",
    "aten.conv2d.default": "conv",
    "aten.conv3d.default": "conv",
    "aten.conv1d.padding": "conv",
    "aten.conv2d.padding": "conv",
    "aten.conv3d.padding": "conv",
    "aten.conv_transpose1d.default": "convtranspose",
    "aten.conv_transpose2d.input": "convtranspose",
    "aten.conv_transpose3d.input": "convtranspose",
    "aten.linear.default": "linear",
    "aten.convolution.default": "conv",  # transposed flag checked below
}


def export_op_name(target) -> str:
    return str(target)
