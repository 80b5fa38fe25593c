"""Where a torch graph can be folded: each batch-norm call of an FX graph matched to its
inventory layer, the stored tensors it normalises with, and the producer that feeds it
(found by :func:`~bncheck.backends.torch.producers.producer_call`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from bncheck.backends.torch.bn_like import foldable_bn_module, standard_bn_forward
from bncheck.backends.torch.ops import arg, bn_signature
from bncheck.backends.torch.producers import producer_call
from bncheck.backends.torch.tensors import get_attr_tensor
from bncheck.layer import BNLayer


@dataclass
class FoldProducer:
    """A producer the fold can rewrite: a conv/linear module, or a functional call on parameters."""

    kind: str  # conv | convtranspose | linear
    label: str
    node: fx.Node | None
    module: nn.Module | None = None  # call_module producers
    weight_target: str | None = None  # functional producers: get_attr targets
    bias_target: str | None = None
    groups: int = 1
    #: rank of the producer output from shape propagation (None: unknown)
    out_rank: int | None = None


@dataclass
class Site:
    """One BN call in the graph, what feeds it, and the stored tensors it normalises with."""

    layer: BNLayer
    node: fx.Node | None
    style: str  # module | function | tuple
    module_path: str | None  # call_module target
    mean: torch.Tensor | None
    var: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    training: bool
    producer: FoldProducer | None = None
    blockers: list[str] = field(default_factory=list)


def module_site(layer: BNLayer, bn: nn.Module, node: fx.Node | None, *, training: bool) -> Site:
    """The site of a BN module called as one ``call_module`` node (or, untraced, by its path)."""
    return Site(
        layer=layer,
        node=node,
        style="module",
        module_path=layer.name,
        mean=getattr(bn, "running_mean", None),
        var=getattr(bn, "running_var", None),
        weight=getattr(bn, "weight", None),
        bias=getattr(bn, "bias", None),
        eps=float(getattr(bn, "eps", layer.eps or 1e-5)),
        training=training,
    )


def _call_module_site(node: fx.Node, layer: BNLayer, bn: nn.Module) -> Site:
    training = (bool(bn.training) and standard_bn_forward(bn)) or getattr(bn, "running_mean", None) is None
    site = module_site(layer, bn, node, training=training)
    if not foldable_bn_module(bn, layer.eps):
        site.blockers.append(f"{type(bn).__name__} has its own forward()")
    return site


def _function_layer(node: fx.Node, names: tuple[str, ...], by_name: dict, by_node: dict, seen: set[str]):
    """The inventory layer of a functional BN call: by the owner of its running statistics,
    by its node name, or by the name the inventory gave it."""
    mean_node = arg(node, names, "running_mean")
    owner = mean_node.target.rsplit(".", 1)[0] if getattr(mean_node, "op", "") == "get_attr" else None
    layer = by_name.get(owner) if owner else None
    if layer is None or layer.name in seen:
        layer = by_node.get(node.name)
    if layer is None and owner:
        layer = by_name.get(f"{owner}.{node.name}")
    if layer is None:
        layer = by_name.get(node.name)
    return layer


def _call_function_site(gm: fx.GraphModule, node: fx.Node, layer: BNLayer) -> Site:
    names, is_tuple = bn_signature(node.target)
    training = bool(arg(node, names, "training", False)) if "training" in names else False
    site = Site(
        layer=layer,
        node=node,
        style="tuple" if is_tuple else "function",
        module_path=None,
        mean=get_attr_tensor(gm, arg(node, names, "running_mean")),
        var=get_attr_tensor(gm, arg(node, names, "running_var")),
        weight=get_attr_tensor(gm, arg(node, names, "weight")),
        bias=get_attr_tensor(gm, arg(node, names, "bias")),
        eps=float(arg(node, names, "eps", 1e-5)),
        training=training,
    )
    for label in ("weight", "bias"):
        value = arg(node, names, label)
        if value is not None and getattr(value, "op", "") != "get_attr":
            site.blockers.append(f"its {label} is computed, not a parameter")
    if is_tuple:
        for user in node.users:
            if user.target.__name__ != "getitem" or (user.args[1] != 0 and user.users):
                site.blockers.append("its saved statistics are used")
                break
    return site


def find_sites(gm: fx.GraphModule, layers: list[BNLayer]) -> tuple[list[Site], set[str]]:
    """Match every BN call of ``gm`` to an inventory layer (by module path, by the owner of
    its running statistics, or by node name). Returns the sites and the unmatched layers."""
    by_name = {layer.name: layer for layer in layers}
    by_node = {layer.input_name: layer for layer in layers if layer.input_name}
    modules = dict(gm.named_modules())
    sites: list[Site] = []
    seen: set[str] = set()
    for node in gm.graph.nodes:
        site = None
        if node.op == "call_module" and node.target in by_name:
            site = _call_module_site(node, by_name[node.target], modules[node.target])
        elif node.op == "call_function" and bn_signature(node.target) is not None:
            layer = _function_layer(node, bn_signature(node.target)[0], by_name, by_node, seen)
            if layer is not None:
                site = _call_function_site(gm, node, layer)
        if site is None or site.layer.name in seen:
            continue
        seen.add(site.layer.name)
        if site.mean is None or site.var is None or site.training:
            site.blockers.append("no running statistics to fold (batch statistics at inference)")
        site.producer = fold_producer(modules, site.node.args[0] if site.node.args else None)
        sites.append(site)
    return sites, {layer.name for layer in layers} - seen


def fold_producer(modules: dict[str, nn.Module], node) -> FoldProducer | None:
    """The producer feeding ``node`` if the fold can rewrite it (a module, or a call on parameters)."""
    call = producer_call(node, modules)
    if call is None:
        return None
    if call.module_path is not None:
        module = modules[call.module_path]
        return FoldProducer(kind=call.kind, label=call.module_path, node=node, module=module, groups=call.groups)
    weight, bias = call.weight, call.bias
    if getattr(weight, "op", "") != "get_attr":
        return None
    if bias is not None and getattr(bias, "op", "") != "get_attr":
        return None
    return FoldProducer(
        kind=call.kind,
        label=weight.target.rsplit(".", 1)[0] if "." in weight.target else node.name,
        node=node,
        weight_target=weight.target,
        bias_target=bias.target if bias is not None else None,
        groups=int(call.groups),
    )


def propagate_ranks(gm: fx.GraphModule, sites: list[Site], example: tuple | None) -> None:
    """Record each Linear producer's output rank (from export metadata, else by running ``example``)."""
    missing = []
    for site in sites:
        if site.producer is None or site.producer.kind != "linear":  # only Linear needs the rank
            continue
        val = site.producer.node.meta.get("val")
        if val is not None and hasattr(val, "dim"):
            site.producer.out_rank = int(val.dim())
        else:
            missing.append(site)
    if not missing or example is None:
        return
    ranks = _run_ranks(gm, {site.producer.node.name for site in missing}, example)
    for site in missing:
        site.producer.out_rank = ranks.get(site.producer.node.name)


def _run_ranks(gm: fx.GraphModule, wanted: set[str], example: tuple) -> dict[str, int]:
    """Output ranks of the nodes named ``wanted`` when ``gm`` runs on ``example`` ({} if it fails)."""
    ranks: dict[str, int] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in wanted and isinstance(out, torch.Tensor):
                ranks[n.name] = out.dim()
            return out

    try:
        with torch.no_grad():
            _Recorder(gm).run(*example)
    except Exception:  # ranks stay unknown; Linear producers are then kept
        return {}
    return ranks


def fold_blocker(site: Site, swap_only: bool) -> str | None:
    """Why this site must not be folded (None: fold it)."""
    layer = site.layer
    if site.blockers:
        return "; ".join(site.blockers)
    if not layer.foldable:
        return layer.fold_reason or "not foldable"
    prod = site.producer
    if prod is None:
        return "the producer is not a conv/linear on a parameter in the traced graph"
    if len(prod.node.users) != 1:
        return f"{prod.label} output is also used elsewhere"
    if swap_only and site.style != "module":
        return (
            "a BN without its own module call (functional or a BN subclass such as BatchNormAct) "
            "cannot be removed in a state dict; write .pt2/.ts/.onnx to fold it"
        )
    if swap_only and prod.module is None:
        return "its producer is a functional call, which a state dict cannot change; write .pt2/.ts/.onnx to fold it"
    if prod.kind == "linear" and prod.out_rank != 2:
        if prod.out_rank is None:
            return "the Linear output rank is unknown (no example input ran), so the BN axis cannot be confirmed"
        return f"the Linear output is {prod.out_rank}-D: BN normalises axis 1, Linear acts on the last axis"
    return None
