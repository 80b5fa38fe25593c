"""Folding BN layers of PyTorch models: nn.Modules, torch.export programs and TorchScript.

The user's module is never modified: every path works on a copy.

* **nn.Module** (from ``--arch``, a pickle, or the API): the copy is traced with
  ``torch.fx.symbolic_trace`` in eval mode and each BN call is matched to its producer *on
  the graph* (a ``call_module`` conv/linear, or a ``F.conv*``/``F.linear``/aten call on a
  parameter). A BN folds when the inventory found it foldable (the producer's output feeds
  nothing else, the producer module is called once, its weight is not shared) and, for a
  Linear producer, when shape propagation shows a 2-D ``(N, C)`` output (``BatchNorm1d`` on
  ``(N, C, L)`` normalises axis 1 while Linear acts on the last axis). New weights come from
  :mod:`bncheck.numerics.fold_math` (float64, cast once). Then either

  - *graph mode* (``.pt2``/``.ts``/``.onnx`` outputs): the BN node's uses are rewired to the
    producer node and the node is erased; the result is a ``GraphModule``. BN subclasses
    traced through (timm's ``BatchNormAct2d``: ``F.batch_norm`` then an activation) lose
    only the ``F.batch_norm`` call; the activation stays.
  - *module mode* (state-dict and pickle outputs): the BN module is swapped for
    ``nn.Identity`` in the eager copy (the model keeps its own class and forward; the state
    dict keeps its key names). Only ``call_module`` BN layers can be swapped.

  Models torch.fx cannot trace fall back to module mode on exact ``nn.Sequential`` patterns
  (a conv/linear immediately followed by a standard BN in the same Sequential).
* **torch.export programs**: the same graph mode on the unlifted module
  (``program.module()``, aten ops on ``get_attr`` parameters), then re-exported with the
  original example inputs (dynamic dimensions kept where the graph shows them).
* **TorchScript**: ``torch.jit.freeze`` of an eval copy, whose own passes fold Conv+BN and
  Linear+BN on the frozen graph (per call, in float32). Which layers it folded is read back
  from the BN nodes left in the frozen graph; the result is only written as TorchScript.

``affine=True`` replaces BN layers that cannot be folded (but use running statistics) by
:class:`ChannelAffine`: ``torch.addcmul(shift, x, scale)`` per channel.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from bncheck.backends.interface import FoldedModel, FoldOutcome
from bncheck.backends.torch import graph as torch_graph
from bncheck.errors import first_line
from bncheck.layer import BNLayer
from bncheck.numerics import fold_math

# ------------------------------------------------------------------------------ modules


class ChannelAffine(nn.Module):
    """Inference BN as a per-channel multiply-add on axis 1: ``x * scale + shift``
    (``torch.addcmul``), for BN layers that cannot be folded (``--affine``)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return torch.addcmul(self.shift.reshape(shape), x, self.scale.reshape(shape))

    @classmethod
    def empty(cls, num_features: int, dtype=torch.float32) -> ChannelAffine:
        return cls(torch.ones(num_features, dtype=dtype), torch.zeros(num_features, dtype=dtype))


def _standard_bn_forward(module: nn.Module) -> bool:
    """Whether ``module`` runs the stock BN forward (so swapping it for an affine map is exact)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    forward = type(module).forward
    return forward in (_BatchNorm.forward, nn.SyncBatchNorm.forward)


# ------------------------------------------------------------------------------ op tables

#: F.batch_norm's argument order differs from aten.batch_norm's / torch.batch_norm's.
_F_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
_ATEN_BN_ARGS = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
_ATEN_BN_NO_TRAINING_ARGS = ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps")


def _bn_signature(target) -> tuple[tuple[str, ...], bool] | None:
    """Argument names of a BN call target and whether it returns a tuple (output first)."""
    import torch.nn.functional as F

    if target is F.batch_norm:
        return _F_BN_ARGS, False
    if target is torch.batch_norm:
        return _ATEN_BN_ARGS, False
    name = str(target)
    if name == "aten.batch_norm.default":
        return _ATEN_BN_ARGS, False
    if name == "aten._native_batch_norm_legit_no_training.default":
        return _ATEN_BN_NO_TRAINING_ARGS, True
    return None


def _producer_signature(target) -> tuple[str, int, int | None] | None:
    """(kind, position of groups, position of the ``transposed`` flag) of a functional producer."""
    import torch.nn.functional as F

    table = {
        F.conv1d: ("conv", 6, None),
        F.conv2d: ("conv", 6, None),
        F.conv3d: ("conv", 6, None),
        torch.conv1d: ("conv", 6, None),
        torch.conv2d: ("conv", 6, None),
        torch.conv3d: ("conv", 6, None),
        F.conv_transpose1d: ("convtranspose", 6, None),
        F.conv_transpose2d: ("convtranspose", 6, None),
        F.conv_transpose3d: ("convtranspose", 6, None),
        F.linear: ("linear", -1, None),
    }
    if target in table:
        return table[target]
    name = str(target)
    for dims in ("1d", "2d", "3d"):
        if name in (f"aten.conv{dims}.default", f"aten.conv{dims}.padding"):
            return "conv", 6, None
        if name == f"aten.conv_transpose{dims}.input":
            return "convtranspose", 6, None
    if name == "aten.linear.default":
        return "linear", -1, None
    if name == "aten.convolution.default":
        return "conv", 8, 6
    return None


def _arg(node: fx.Node, names: tuple[str, ...], name: str, default=None):
    i = names.index(name)
    if i < len(node.args):
        return node.args[i]
    return node.kwargs.get(name, default)


# ------------------------------------------------------------------------------ sites


@dataclass
class _Producer:
    kind: str  # conv | convtranspose | linear
    label: str
    node: fx.Node
    module: nn.Module | None = None  # call_module producers
    weight_target: str | None = None  # functional producers: get_attr targets
    bias_target: str | None = None
    groups: int = 1
    #: rank of the producer output from shape propagation (None: unknown)
    out_rank: int | None = None


@dataclass
class _Site:
    """One BN call in the graph, what feeds it, and the stored tensors it normalises with."""

    layer: BNLayer
    node: fx.Node
    style: str  # module | function | tuple
    module_path: str | None  # call_module target
    mean: torch.Tensor | None
    var: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    training: bool
    producer: _Producer | None = None
    blockers: list[str] = field(default_factory=list)

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        def arr(t):
            return None if t is None else t.detach().cpu().double().numpy().reshape(-1)

        return fold_math.bn_scale_shift(arr(self.mean), arr(self.var), self.eps, weight=arr(self.weight), bias=arr(self.bias))


def _get_attr_tensor(root: nn.Module, node) -> torch.Tensor | None:
    if getattr(node, "op", None) != "get_attr":
        return None
    obj: Any = root
    for part in node.target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def _find_sites(gm: fx.GraphModule, layers: list[BNLayer]) -> tuple[list[_Site], set[str]]:
    """Match every BN call of ``gm`` to an inventory layer (by module path, by the owner of
    its running statistics, or by node name). Returns the sites and the unmatched layers."""
    by_name = {layer.name: layer for layer in layers}
    by_node = {layer.input_name: layer for layer in layers if layer.input_name}
    modules = dict(gm.named_modules())
    sites: list[_Site] = []
    seen: set[str] = set()
    for node in gm.graph.nodes:
        site = None
        if node.op == "call_module" and node.target in by_name:
            bn = modules[node.target]
            site = _Site(
                layer=by_name[node.target],
                node=node,
                style="module",
                module_path=node.target,
                mean=getattr(bn, "running_mean", None),
                var=getattr(bn, "running_var", None),
                weight=getattr(bn, "weight", None),
                bias=getattr(bn, "bias", None),
                eps=float(getattr(bn, "eps", by_name[node.target].eps or 1e-5)),
                training=(bool(bn.training) and _standard_bn_forward(bn)) or getattr(bn, "running_mean", None) is None,
            )
            if not _standard_bn_forward(bn) and not behaves_like_bn(bn, site.layer.eps):
                site.blockers.append(f"{type(bn).__name__} has its own forward()")
        elif node.op == "call_function" and _bn_signature(node.target) is not None:
            names, is_tuple = _bn_signature(node.target)
            mean_node = _arg(node, names, "running_mean")
            owner = mean_node.target.rsplit(".", 1)[0] if getattr(mean_node, "op", "") == "get_attr" else None
            layer = by_name.get(owner) if owner else None
            if layer is None or layer.name in seen:
                layer = by_node.get(node.name)
            if layer is None and owner:
                layer = by_name.get(f"{owner}.{node.name}")
            if layer is None:
                layer = by_name.get(node.name)
            if layer is None:
                continue
            training = bool(_arg(node, names, "training", False)) if "training" in names else False
            eps = _arg(node, names, "eps", 1e-5)
            site = _Site(
                layer=layer,
                node=node,
                style="tuple" if is_tuple else "function",
                module_path=None,
                mean=_get_attr_tensor(gm, mean_node),
                var=_get_attr_tensor(gm, _arg(node, names, "running_var")),
                weight=_get_attr_tensor(gm, _arg(node, names, "weight")),
                bias=_get_attr_tensor(gm, _arg(node, names, "bias")),
                eps=float(eps),
                training=training,
            )
            for label in ("weight", "bias"):
                arg = _arg(node, names, label)
                if arg is not None and getattr(arg, "op", "") != "get_attr":
                    site.blockers.append(f"its {label} is computed, not a parameter")
            if is_tuple:
                for user in node.users:
                    if user.target.__name__ != "getitem" or (user.args[1] != 0 and user.users):
                        site.blockers.append("its saved statistics are used")
                        break
        if site is None:
            continue
        if site.layer.name in seen:
            continue
        seen.add(site.layer.name)
        if site.mean is None or site.var is None or site.training:
            site.blockers.append("no running statistics to fold (batch statistics at inference)")
        site.producer = _producer(gm, modules, site.node.args[0] if site.node.args else None)
        sites.append(site)
    return sites, {layer.name for layer in layers} - seen


def _producer(gm: fx.GraphModule, modules: dict[str, nn.Module], node) -> _Producer | None:
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_module":
        module = modules.get(node.target)
        kind = torch_graph.module_kind(module) if module is not None else None
        if kind is None:
            return None
        return _Producer(kind=kind, label=node.target, node=node, module=module, groups=int(getattr(module, "groups", 1)))
    if node.op == "call_function":
        sig = _producer_signature(node.target)
        if sig is None:
            return None
        kind, groups_at, transposed_at = sig
        if transposed_at is not None:
            transposed = node.args[transposed_at] if len(node.args) > transposed_at else node.kwargs.get("transposed", False)
            kind = "convtranspose" if transposed else "conv"
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if getattr(weight, "op", "") != "get_attr":
            return None
        if bias is not None and getattr(bias, "op", "") != "get_attr":
            return None
        groups = 1
        if groups_at >= 0:
            groups = node.args[groups_at] if len(node.args) > groups_at else node.kwargs.get("groups", 1)
        return _Producer(
            kind=kind,
            label=weight.target.rsplit(".", 1)[0] if "." in weight.target else node.name,
            node=node,
            weight_target=weight.target,
            bias_target=bias.target if bias is not None else None,
            groups=int(groups),
        )
    return None


def _propagate_ranks(gm: fx.GraphModule, sites: list[_Site], example: tuple | None) -> None:
    """Record each producer's output rank (from export metadata, else by running ``example``)."""
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
    ranks: dict[str, int] = {}
    wanted = {site.producer.node.name for site in missing}

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
        return
    for site in missing:
        site.producer.out_rank = ranks.get(site.producer.node.name)


# ------------------------------------------------------------------------------ decisions


def _fold_blocker(site: _Site, swap_only: bool) -> str | None:
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


def _new_params(site: _Site) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(new weight, new bias, the weight tensor they replace) for a producer."""
    prod = site.producer
    scale, shift = site.scale_shift()
    if prod.module is not None:
        weight, bias = prod.module.weight, prod.module.bias
    else:
        weight = _resolve(site.node.graph.owning_module, prod.weight_target)
        bias = _resolve(site.node.graph.owning_module, prod.bias_target) if prod.bias_target else None
    w = weight.detach().cpu().numpy()
    b = None if bias is None else bias.detach().cpu().numpy()
    if prod.kind == "linear":
        new_w, new_b = fold_math.fold_bn_into_linear(w, b, scale, shift)
    else:
        new_w, new_b = fold_math.fold_bn_into_conv(w, b, scale, shift, transposed=prod.kind == "convtranspose", groups=prod.groups)
    return torch.from_numpy(new_w).to(weight.device), torch.from_numpy(new_b).to(weight.device), weight


def _affine_module(site: _Site) -> ChannelAffine:
    scale, shift = site.scale_shift()
    dtype = site.mean.dtype if site.mean is not None and site.mean.is_floating_point() else torch.float32
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    s, t = (np.asarray(v, dtype=np.float64).astype(np_dtype) for v in (scale, shift))
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))):
        raise ValueError(f"the per-channel scale/shift overflows {np_dtype}")
    return ChannelAffine(torch.from_numpy(s), torch.from_numpy(t))


def _resolve(root: nn.Module, target: str):
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_tensor(root: nn.Module, target: str, value: torch.Tensor, like: torch.Tensor | None) -> None:
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


def _set_producer_params(gm: nn.Module, site: _Site, new_w: torch.Tensor, new_b: torch.Tensor, old_w) -> None:
    prod = site.producer
    if prod.module is not None:
        module = prod.module
        module.weight = nn.Parameter(new_w, requires_grad=old_w.requires_grad)
        module.bias = nn.Parameter(new_b, requires_grad=old_w.requires_grad)
        return
    _set_tensor(gm, prod.weight_target, new_w, old_w)
    if prod.bias_target is not None:
        _set_tensor(gm, prod.bias_target, new_b, _resolve(gm, prod.bias_target))
        return
    owner_path, _, wname = prod.weight_target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    base = wname[: -len("weight")] + "bias" if wname.endswith("weight") else f"{wname}_bias"
    name, k = base, 1
    while hasattr(owner, name) and getattr(owner, name) is not None:
        k += 1
        name = f"{base}_{k}"
    owner._parameters.pop(name, None)
    owner.register_parameter(name, nn.Parameter(new_b, requires_grad=old_w.requires_grad))
    target = f"{owner_path}.{name}" if owner_path else name
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


# ------------------------------------------------------------------------------ graph edits


def _replace_output(site: _Site, replacement: fx.Node) -> None:
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


def _drop_unused_attrs(gm: fx.GraphModule, targets: set[str]) -> None:
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
        owner_path = target.rpartition(".")[0]
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


def _bn_attr_targets(site: _Site) -> set[str]:
    if site.style == "module":
        return {site.module_path}
    return {a.target for a in (*site.node.args, *site.node.kwargs.values()) if isinstance(a, fx.Node) and a.op == "get_attr"}


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def _unique_path(root: nn.Module, base: str) -> str:
    base = base.replace(".", "_")
    name, k = base, 1
    while hasattr(root, name):
        k += 1
        name = f"{base}_{k}"
    return name


# ------------------------------------------------------------------------------ nn.Module


def fold_module(
    module: nn.Module,
    layers: list[BNLayer],
    *,
    affine: bool = False,
    swap_only: bool = False,
    example: tuple | None = None,
) -> FoldedModel:
    """Fold a copy of ``module``: graph mode (a GraphModule), or module mode (the eager copy
    with BN modules swapped for ``nn.Identity``) when ``swap_only``."""
    work = copy.deepcopy(module).eval()
    try:
        gm = _trace(work, layers)
    except Exception as exc:  # untraceable Python in forward()
        first = first_line(exc, limit=160)
        result = _fold_sequential(work, layers, affine=affine, example=example)
        result.notes.append(f"torch.fx could not trace the model ({first}); folded exact nn.Sequential patterns only")
        return result
    return _fold_graph(gm, work, layers, affine=affine, swap_only=swap_only, example=example)


class _FoldTracer(fx.Tracer):
    """symbolic_trace, except that BN-like modules which compute exactly inference BN (e.g. a
    frozen BN) stay single ``call_module`` nodes; BN subclasses with extra behaviour (an
    activation) are traced through, so that their ``F.batch_norm`` call can be removed alone."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def _trace(work: nn.Module, layers: list[BNLayer]) -> fx.GraphModule:
    modules = dict(work.named_modules())
    leaves = set()
    for layer in layers:
        module = modules.get(layer.name)
        if module is not None and not _standard_bn_forward(module) and behaves_like_bn(module, layer.eps):
            leaves.add(layer.name)
    tracer = _FoldTracer(leaves)
    graph = tracer.trace(work)
    return fx.GraphModule(tracer.root, graph, type(work).__name__)


def behaves_like_bn(module: nn.Module, eps: float | None) -> bool:
    """Whether a BN-like module (not a stock BN class) computes exactly inference BN with its
    stored statistics and ``eps``: checked by running it on random input (in eval mode)."""
    own = {**dict(module.named_buffers(recurse=False)), **dict(module.named_parameters(recurse=False))}
    mean, var = own.get("running_mean"), own.get("running_var")
    eps = getattr(module, "eps", eps)
    if mean is None or var is None or not isinstance(eps, (int, float)) or not mean.is_floating_point():
        return False
    weight, bias = own.get("weight"), own.get("bias")
    c = mean.numel()
    g = torch.Generator().manual_seed(0)
    for shape in ((2, c, 3, 3), (2, c), (2, c, 3), (2, c, 2, 2, 2)):
        x = torch.randn(shape, generator=g, dtype=mean.dtype)
        try:
            with torch.no_grad():
                y = module(x)
        except Exception:
            continue
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            return False
        view = [1, -1] + [1] * (x.dim() - 2)
        ref = (x.double() - mean.double().view(view)) / torch.sqrt(var.double().view(view) + eps)
        if weight is not None:
            ref = ref * weight.double().view(view)
        if bias is not None:
            ref = ref + bias.double().view(view)
        return bool(torch.allclose(y.double(), ref, rtol=1e-4, atol=1e-5))
    return False


def _fold_graph(
    gm: fx.GraphModule, work: nn.Module, layers: list[BNLayer], *, affine: bool, swap_only: bool, example
) -> FoldedModel:
    """Fold every site of ``gm`` (edited in place). In module mode the swaps go to ``work``,
    the eager module ``gm`` was traced from (they share their submodules)."""
    sites, unmatched = _find_sites(gm, layers)
    _propagate_ranks(gm, sites, example)
    outcomes: dict[str, FoldOutcome] = {}
    changed: set[str] = set()
    for site in sites:
        reason = _fold_blocker(site, swap_only)
        if reason is None:
            try:
                new_w, new_b, old_w = _new_params(site)
            except ValueError as exc:
                reason = str(exc)
            else:
                _set_producer_params(gm, site, new_w, new_b, old_w)
                if swap_only:
                    _set_submodule(work, site.module_path, nn.Identity())
                else:
                    changed |= _bn_attr_targets(site)
                    _replace_output(site, site.producer.node)
                label = site.producer.label
                outcomes[site.layer.name] = FoldOutcome("folded", label, f"into {site.producer.kind} {label}")
                continue
        outcomes[site.layer.name] = _maybe_affine(gm, work, site, reason, affine=affine, swap_only=swap_only, changed=changed)
    for layer in layers:
        if layer.name in unmatched:
            outcomes[layer.name] = FoldOutcome("kept", None, _unmatched_reason(layer))
    if swap_only:
        return FoldedModel(model=work, outcomes=outcomes, extras={"mode": "module"})
    gm.graph.lint()
    gm.recompile()
    _drop_unused_attrs(gm, changed)
    return FoldedModel(model=gm, outcomes=outcomes, extras={"mode": "graph"})


def _maybe_affine(gm, work, site: _Site, reason: str, *, affine: bool, swap_only: bool, changed: set[str]) -> FoldOutcome:
    if not affine:
        return FoldOutcome("kept", None, reason)
    if site.mean is None or site.var is None or site.training:
        return FoldOutcome("kept", None, f"{reason}; no affine map either (no running statistics)")
    if site.style == "module" and any("own forward" in b for b in site.blockers):
        return FoldOutcome("kept", None, f"{reason}; not replaced by an affine map (custom forward)")
    if swap_only and site.style != "module":
        return FoldOutcome("kept", None, f"{reason}; an affine map needs its own module call in a state dict")
    try:
        module = _affine_module(site)
    except ValueError as exc:
        return FoldOutcome("kept", None, f"{reason}; {exc}")
    if site.style == "module":
        _set_submodule(gm, site.module_path, module)
        if swap_only:
            _set_submodule(work, site.module_path, module)
    else:
        path = _unique_path(gm, f"{site.layer.name}_affine")
        gm.add_submodule(path, module)
        graph = site.node.graph
        with graph.inserting_before(site.node):
            new = graph.call_module(path, (site.node.args[0],))
        changed |= _bn_attr_targets(site)
        _replace_output(site, new)
    return FoldOutcome("affine", None, f"kept as x*scale+shift (torch.addcmul): {reason}")


def _fold_sequential(work: nn.Module, layers: list[BNLayer], *, affine: bool, example: tuple | None) -> FoldedModel:
    """Module mode for untraceable models: exact ``nn.Sequential`` conv/linear -> BN pairs."""
    modules = dict(work.named_modules())
    names = {layer.name for layer in layers}
    producers = torch_graph.sequential_producers(work, names)
    ranks = _hook_ranks(work, {p.name for p in producers.values() if p.kind == "linear"}, example)
    outcomes: dict[str, FoldOutcome] = {}
    for layer in layers:
        prod = producers.get(layer.name)
        bn = modules.get(layer.name)
        reason = None
        if prod is None or bn is None:
            reason = layer.fold_reason or "no exact nn.Sequential producer (model not traceable)"
        elif not prod.foldable:
            reason = "; ".join(prod.blockers) or f"fed by {prod.name}, not by a conv/linear"
        elif not (_standard_bn_forward(bn) or behaves_like_bn(bn, layer.eps)):
            reason = f"{type(bn).__name__} has its own forward()"
        elif bn.running_mean is None or bn.running_var is None:
            reason = "no running statistics to fold"
        elif prod.kind == "linear" and ranks.get(prod.name) != 2:
            reason = "the Linear output is not known to be 2-D (N, C)"
        site = None
        if bn is not None and getattr(bn, "running_mean", None) is not None:
            site = _Site(
                layer=layer, node=None, style="module", module_path=layer.name, mean=bn.running_mean,
                var=bn.running_var, weight=getattr(bn, "weight", None), bias=getattr(bn, "bias", None),
                eps=float(getattr(bn, "eps", layer.eps or 1e-5)), training=False,
            )
        if reason is None:
            producer_module = modules[prod.name]
            site.producer = _Producer(kind=prod.kind, label=prod.name, node=None, module=producer_module,
                                      groups=int(getattr(producer_module, "groups", 1)))
            try:
                new_w, new_b, old_w = _new_params(site)
            except ValueError as exc:
                reason = str(exc)
            else:
                _set_producer_params(work, site, new_w, new_b, old_w)
                _set_submodule(work, layer.name, nn.Identity())
                outcomes[layer.name] = FoldOutcome("folded", prod.name, f"into {prod.kind} {prod.name}")
                continue
        if affine and site is not None and (_standard_bn_forward(bn) or behaves_like_bn(bn, layer.eps)):
            try:
                _set_submodule(work, layer.name, _affine_module(site))
                outcomes[layer.name] = FoldOutcome("affine", None, f"kept as x*scale+shift (torch.addcmul): {reason}")
                continue
            except ValueError as exc:
                reason = f"{reason}; {exc}"
        outcomes[layer.name] = FoldOutcome("kept", None, reason)
    return FoldedModel(model=work, outcomes=outcomes, extras={"mode": "module"})


def _hook_ranks(work: nn.Module, names: set[str], example: tuple | None) -> dict[str, int]:
    if not names or example is None:
        return {}
    ranks: dict[str, int] = {}
    handles = []
    modules = dict(work.named_modules())
    for name in names:
        def hook(_m, _inp, out, name=name):
            if isinstance(out, torch.Tensor):
                ranks[name] = out.dim()
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            work(*example)
    except Exception:
        return {}
    finally:
        for h in handles:
            h.remove()
    return ranks


# ------------------------------------------------------------------------------ torch.export


def _unmatched_reason(layer: BNLayer) -> str:
    if layer.foldable is False and layer.fold_reason:
        return layer.fold_reason
    return (
        "no batch-norm call for it in the traced graph: its forward computes the normalisation "
        "with elementwise ops (or it is not called), which bncheck does not rewrite"
    )


def fold_export(program, layers: list[BNLayer], *, affine: bool = False, example: tuple | None = None) -> FoldedModel:
    """Fold the unlifted module of an ExportedProgram and export the result again (with the
    program's own example inputs, else ``example``)."""
    gm = program.module()
    example = example_inputs(program) or ((tuple(example), {}) if example is not None else None)
    args = example[0] if example is not None else None
    result = _fold_graph(gm, gm, layers, affine=affine, swap_only=False, example=args)
    if not any(o.status in ("folded", "affine") for o in result.outcomes.values()):
        result.model = program
        return result
    args, kwargs = example if example is not None else ((), {})
    try:
        new = torch.export.export(result.model, args, kwargs or None, dynamic_shapes=_dynamic_shapes(program, args))
    except Exception:
        new = torch.export.export(result.model, args, kwargs or None)
        result.notes.append("re-exported with static shapes (the dynamic dimensions could not be kept)")
    result.extras["graph_module"] = result.model
    result.model = new
    return result


def example_inputs(program) -> tuple[tuple, dict] | None:
    """The (args, kwargs) a program was exported with, or inputs shaped like its placeholders."""
    example = getattr(program, "example_inputs", None)
    if example is not None:
        args, kwargs = example
        return tuple(args), dict(kwargs or {})
    return None


def _dynamic_shapes(program, args: tuple):
    """A dynamic_shapes spec keeping the symbolic dimensions of the program's tensor inputs."""
    from torch.export import Dim

    user_inputs = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind.name == "USER_INPUT" and hasattr(spec.arg, "name")
    ]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    if len(user_inputs) != len(args) or not all(isinstance(a, torch.Tensor) for a in args):
        return None
    spec = []
    any_dynamic = False
    for name in user_inputs:
        val = placeholders[name].meta.get("val")
        dims = {}
        if val is not None:
            for i, d in enumerate(val.shape):
                if not isinstance(d, int):
                    dims[i] = Dim.DYNAMIC
                    any_dynamic = True
        spec.append(dims or None)
    return tuple(spec) if any_dynamic else None


# ------------------------------------------------------------------------------ TorchScript


def fold_torchscript(module, layers: list[BNLayer]) -> FoldedModel:
    """``torch.jit.freeze`` on an eval copy; its passes fold Conv/Linear + BN per call."""
    work = module.copy() if hasattr(module, "copy") else copy.deepcopy(module)
    work.eval()
    buffers = {}
    modules = dict(work.named_modules())
    for layer in layers:
        bn = work if layer.name == "<root>" else modules.get(layer.name)
        if bn is None:
            continue
        mean = dict(bn.named_buffers(recurse=False)).get("running_mean")
        if mean is not None:
            buffers[layer.name] = mean
    frozen = torch.jit.freeze(work)
    remaining = []
    for node in frozen.graph.findAllNodes("aten::batch_norm"):
        value = node.inputsAt(3).toIValue()
        if isinstance(value, torch.Tensor):
            remaining.append(value)
    from bncheck.backends.torch.source import BN_CLASS_NAMES

    outcomes: dict[str, FoldOutcome] = {}
    for layer in layers:
        mean = buffers.get(layer.name)
        if layer.kind not in BN_CLASS_NAMES:
            outcomes[layer.name] = FoldOutcome(
                "kept", None,
                "a BN-like module without an aten::batch_norm call: torch.jit.freeze may merge its "
                "multiply-add into the conv, but bncheck cannot attribute that (verification covers the result)",
            )
            continue
        kept = mean is None or any(
            t.data_ptr() == mean.data_ptr() or (t.shape == mean.shape and torch.equal(t, mean)) for t in remaining
        )
        if not kept:
            into = layer.producer if layer.producer_kind in ("conv", "convtranspose", "linear") else "the preceding op"
            outcomes[layer.name] = FoldOutcome("folded", into, "folded by torch.jit.freeze on the frozen graph")
        elif layer.foldable is False:
            outcomes[layer.name] = FoldOutcome("kept", None, layer.fold_reason)
        else:
            outcomes[layer.name] = FoldOutcome(
                "kept", None, "torch.jit.freeze folds only Conv/Linear + BN patterns and did not fold this one"
            )
    return FoldedModel(model=frozen, outcomes=outcomes, extras={"mode": "freeze"})


# ------------------------------------------------------------------------------ figures


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


# ------------------------------------------------------------------------------ running


def as_tensors(batch: tuple) -> tuple:
    """A batch of numpy arrays as CPU tensors."""
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in batch)


def _outputs_to_numpy(out) -> list[np.ndarray]:
    from torch.utils._pytree import tree_flatten

    leaves, _ = tree_flatten(out)
    return [leaf.detach().cpu().numpy() if isinstance(leaf, torch.Tensor) else np.asarray(leaf) for leaf in leaves]


def runner(fn):
    """``batch (tuple of arrays) -> list of numpy outputs`` around a torch callable."""

    def run(batch: tuple) -> list[np.ndarray]:
        with torch.no_grad():
            return _outputs_to_numpy(fn(*as_tensors(batch)))

    return run


def original_callable(source):
    """The user's model, in eval mode, without touching the user's object."""
    if source.format == "export":
        return source.program.module()
    module = source.module
    if isinstance(module, torch.jit.ScriptModule):
        work = module.copy() if hasattr(module, "copy") else module
        return work.eval()
    return copy.deepcopy(module).eval()


def callable_of(target):
    if hasattr(target, "graph_signature"):  # ExportedProgram
        return target.module()
    if isinstance(target, nn.Module):
        return target.eval()
    return target


def timed_pair(source, folded_model, batch: tuple):
    """(original, folded) zero-argument callables on ``batch`` for the speed comparison."""
    original = original_callable(source)
    folded = callable_of(folded_model)
    args = as_tensors(batch)

    def run_original():
        with torch.no_grad():
            return original(*args)

    def run_folded():
        with torch.no_grad():
            return folded(*args)

    return run_original, run_folded


# ------------------------------------------------------------------------------ converting


def convert(model, kind: str, example: tuple):
    """``model`` (GraphModule / module / ExportedProgram / ScriptModule) as ``kind``:
    onnx (ModelProto), export (ExportedProgram) or torchscript (ScriptModule).
    Returns (object, notes)."""
    notes: list[str] = []
    if kind == "export":
        if hasattr(model, "graph_signature"):
            return model, notes
        return _export(model, example), notes
    if kind == "torchscript":
        if isinstance(model, torch.jit.ScriptModule):
            return model, notes
        target = model.module() if hasattr(model, "graph_signature") else model
        if isinstance(target, fx.GraphModule):
            _drop_string_annotations(target)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's notes on the user's annotations
                return torch.jit.script(target), notes
        except Exception:
            notes.append("TorchScript by torch.jit.trace (torch.jit.script failed): control flow is fixed to the traced path")
            with torch.no_grad():
                return torch.jit.trace(target, example), notes
    if kind == "onnx":
        return _to_onnx(model, example), notes
    raise ValueError(f"unknown output kind {kind}")


def _drop_string_annotations(gm: fx.GraphModule) -> None:
    """Forget type annotations that are strings (``from __future__ import annotations`` in
    the user's code): FX would render them as unknown names that TorchScript rejects."""
    changed = False
    for node in gm.graph.nodes:
        if isinstance(node.type, str):
            node.type = None
            changed = True
    if changed:
        gm.recompile()


def _export(model, example: tuple):
    from torch.export import Dim

    dynamic = tuple({0: Dim.AUTO} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in example)
    try:
        return torch.export.export(model, example, dynamic_shapes=dynamic)
    except Exception:
        return torch.export.export(model, example)


def _to_onnx(model, example: tuple):
    import contextlib
    import io
    import logging

    program = model if hasattr(model, "graph_signature") else _export(model, example)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, example, dynamo=True, optimize=True, verbose=False)
    finally:
        quiet.setLevel(level)
    return onnx_program.model_proto
