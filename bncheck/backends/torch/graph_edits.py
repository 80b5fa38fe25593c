"""Edits of a traced torch model during a fold: new producer parameters, BN calls rewired
and erased, unread tensors and emptied modules dropped, submodules swapped."""

from __future__ import annotations

import torch
from torch import fx, nn

from bncheck.backends.torch.fold_sites import Site
from bncheck.backends.torch.tensors import resolve_tensor


def set_tensor(root: nn.Module, target: str, value: torch.Tensor, like: torch.Tensor | None) -> None:
    """Store ``value`` at ``target`` as a Parameter (if ``like`` is one, or is None) or a buffer."""
    owner_path, _, name = target.rpartition(".")
    owner = root.get_submodule(owner_path) if owner_path else root
    if like is None or isinstance(like, nn.Parameter):
        requires_grad = like.requires_grad if like is not None else False
        if name in owner._parameters or not hasattr(owner, name) or getattr(owner, name) is None:
            owner._parameters.pop(name, None)
            if name in owner.__dict__:
                del owner.__dict__[name]
            owner.register_parameter(name, nn.Parameter(value, requires_grad=requires_grad))
            return
    if name in owner._buffers:
        owner._buffers[name] = value
    else:
        setattr(owner, name, value)


def set_producer_params(gm: nn.Module, site: Site, new_w: torch.Tensor, new_b: torch.Tensor, old_w) -> None:
    """Give the site's producer its folded weight and bias (a new bias parameter if it had none)."""
    prod = site.producer
    if prod.module is not None:
        module = prod.module
        module.weight = nn.Parameter(new_w, requires_grad=old_w.requires_grad)
        module.bias = nn.Parameter(new_b, requires_grad=old_w.requires_grad)
        return
    set_tensor(gm, prod.weight_target, new_w, old_w)
    if prod.bias_target is not None:
        set_tensor(gm, prod.bias_target, new_b, resolve_tensor(gm, prod.bias_target))
        return
    target = _add_bias_parameter(gm, prod.weight_target, nn.Parameter(new_b, requires_grad=old_w.requires_grad))
    graph = prod.node.graph
    with graph.inserting_before(prod.node):
        bias_node = graph.get_attr(target)
    if len(prod.node.args) > 2:
        args = list(prod.node.args)
        args[2] = bias_node
        prod.node.args = tuple(args)
    elif "bias" in prod.node.kwargs or len(prod.node.args) < 2:
        prod.node.kwargs = {**prod.node.kwargs, "bias": bias_node}
    else:
        prod.node.args = (*prod.node.args, bias_node)


def _add_bias_parameter(gm: nn.Module, weight_target: str, bias: nn.Parameter) -> str:
    """Register ``bias`` next to the weight at ``weight_target`` under a free name; its target."""
    owner_path, _, wname = weight_target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    base = wname[: -len("weight")] + "bias" if wname.endswith("weight") else f"{wname}_bias"
    name, k = base, 1
    while hasattr(owner, name) and getattr(owner, name) is not None:
        k += 1
        name = f"{base}_{k}"
    owner._parameters.pop(name, None)
    owner.register_parameter(name, bias)
    return f"{owner_path}.{name}" if owner_path else name


def replace_output(site: Site, replacement: fx.Node) -> None:
    """Point every use of the BN result at ``replacement`` and erase the BN call."""
    graph = site.node.graph
    node = site.node
    if site.style == "tuple":
        for user in list(node.users):
            if user.args[1] == 0:
                user.replace_all_uses_with(replacement)
            graph.erase_node(user)
    else:
        node.replace_all_uses_with(replacement)
    released = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node) and a.op == "get_attr"]
    graph.erase_node(node)
    for arg in released:
        if not arg.users:
            graph.erase_node(arg)


def drop_unused_attrs(gm: fx.GraphModule, targets: set[str]) -> None:
    """Delete BN tensors (and modules left empty) that no graph node reads any more; also
    the unread siblings of a removed BN tensor (``num_batches_tracked``)."""
    owners = {t.rpartition(".")[0] for t in targets if "." in t}
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users and node.target.rpartition(".")[0] in owners:
            targets = targets | {node.target}
            gm.graph.erase_node(node)
    gm.recompile()
    used = {n.target for n in gm.graph.nodes if n.op in ("get_attr", "call_module")}
    for target in sorted(targets):
        if target in used:
            continue
        owner_path, _, name = target.rpartition(".")
        try:
            owner = gm.get_submodule(owner_path) if owner_path else gm
        except AttributeError:
            continue
        owner._parameters.pop(name, None)
        owner._buffers.pop(name, None)
        if name in owner._modules and target not in used:
            del owner._modules[name]
    for target in sorted(targets, key=lambda t: -t.count(".")):
        _drop_empty_owners(gm, target.rpartition(".")[0], used)


def _drop_empty_owners(gm: fx.GraphModule, owner_path: str, used: set[str]) -> None:
    """Delete the module at ``owner_path`` and its ancestors while nothing uses them and they hold nothing."""
    while owner_path and not any(u == owner_path or u.startswith(owner_path + ".") for u in used):
        parent_path, _, name = owner_path.rpartition(".")
        try:
            parent = gm.get_submodule(parent_path) if parent_path else gm
            child = parent._modules.get(name)
        except AttributeError:
            break
        if child is None or any(True for _ in child.parameters()) or any(True for _ in child.buffers()) or child._modules:
            break
        del parent._modules[name]
        owner_path = parent_path


def bn_attr_targets(site: Site) -> set[str]:
    """The module path or the get_attr targets a BN call reads its tensors from."""
    if site.style == "module":
        return {site.module_path}
    return {a.target for a in (*site.node.args, *site.node.kwargs.values()) if isinstance(a, fx.Node) and a.op == "get_attr"}


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def unique_path(root: nn.Module, base: str) -> str:
    """A free attribute name of ``root`` made from ``base`` (dots replaced)."""
    base = base.replace(".", "_")
    name, k = base, 1
    while hasattr(root, name):
        k += 1
        name = f"{base}_{k}"
    return name
