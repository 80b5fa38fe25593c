"""The consumer side of a torch fold: a BN whose result feeds only ``nn.Conv1d/2d/3d`` and
``nn.Linear`` modules (``BatchNorm1d -> Linear``, a BN on the input) folds into them
(:func:`bncheck.numerics.fold_math.fold_bn_before_conv` and
:func:`~bncheck.numerics.fold_math.fold_bn_before_linear`): their weights scaled per input
channel, the shift summed into their biases, and the BN call removed (graph mode) or its
module swapped for ``nn.Identity`` (module mode).

Tried for a site its producer did not take, after every producer fold (a module that absorbed
the BN after it takes the one before it too, from its folded weights). Every user of the BN
result must be such a module, called once, taking the BN result as its only argument, with a
weight of its own. A zero-padded conv keeps the BN unless its shift is all zero
(``reflect``/``replicate``/``circular`` padding is exact); a Linear needs a 2-D ``(N, C)``
input (shape metadata, else the example input run).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from bncheck.backends.torch import graph_edits
from bncheck.backends.torch.fold_proof import PairRun, arg_names, functional_call, module_geometry
from bncheck.backends.torch.fold_sites import FoldProducer, Site, _run_ranks, fold_producer
from bncheck.backends.torch.fold_weights import scale_shift
from bncheck.backends.torch.producers import module_kind, producer_call, shared_weight_blocker
from bncheck.backends.torch.tensors import resolve_tensor
from bncheck.numerics import fold_math
from bncheck.numerics.site_proof import SiteProof, worst_of

#: what a BN before a zero-padded conv is kept with (as the ONNX backend says it)
PADDED_REASON = "BN before a padded Conv: folding would change the border"
METHOD = "torch float64: F.batch_norm then the consumer, against the folded consumer"
#: why a Linear after a BN of unknown input rank is not folded into
UNKNOWN_RANK = "of unknown rank (no shape metadata, no example input ran)"


class ConsumersRun:
    """The proof of one consumer-side site: each consumer's pair, the worst of them."""

    def __init__(self, layer: str, runs: list[PairRun]):
        self.layer = layer
        self.runs = runs

    def prove(self, atol: float, rtol: float) -> SiteProof:
        return worst_of(self.layer, [run.prove(atol, rtol) for run in self.runs], METHOD)


@dataclass
class Consumer:
    """A conv/linear reading the BN result: a module call, or a functional call (aten conv /
    linear of a torch.export graph) on stored tensors (``producer`` then describes it)."""

    node: fx.Node
    kind: str  # conv | linear
    label: str
    module: nn.Module | None = None
    producer: FoldProducer | None = None
    padding: object = 0
    padding_mode: str = "zeros"
    groups: int = 1

    def tensors(self, gm: fx.GraphModule) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.module is not None:
            return self.module.weight, self.module.bias
        bias = self.producer.bias_target
        return resolve_tensor(gm, self.producer.weight_target), resolve_tensor(gm, bias) if bias else None

    def call(self, site: Site):
        """The consumer as it is now, in float64 (a copy), and its input geometry."""
        if self.module is not None:
            module = copy.deepcopy(self.module).double().eval()
            return module, module_geometry(module, self.kind)
        return functional_call(replace(site, producer=self.producer))

    def set(self, gm: fx.GraphModule, site: Site, new_w: torch.Tensor, new_b: torch.Tensor) -> None:
        weight, _ = self.tensors(gm)
        if self.module is None:
            graph_edits.set_producer_params(gm, replace(site, producer=self.producer), new_w, new_b, weight)
            return
        self.module.weight = nn.Parameter(new_w, requires_grad=weight.requires_grad)
        self.module.bias = nn.Parameter(new_b, requires_grad=weight.requires_grad)


def feeds_modules(gm: fx.GraphModule, site: Site) -> bool:
    """Whether some user of the BN result is a conv/linear (worth saying why not)."""
    if site.node is None:
        return False
    modules = dict(gm.named_modules())
    return any(_kind(u, modules) in ("conv", "linear") for u in site.node.users)


def _kind(node: fx.Node, modules: dict) -> str | None:
    if node.op == "call_module":
        return module_kind(modules.get(node.target))
    call = producer_call(node, modules)
    return call.kind if call is not None else None


def consumer_modules(gm: fx.GraphModule, site: Site, *, swap_only: bool, example,
                     rank: int | None = None) -> tuple[list[Consumer], str | None]:
    """Every user of the BN result as a :class:`Consumer`, or why they cannot absorb it."""
    if site.blockers:
        return [], "; ".join(site.blockers)
    if site.node is None or not site.node.args or site.style == "tuple":
        return [], "the BN result is not a single value in the graph"
    if swap_only and site.style != "module":
        return [], "a BN without its own module call cannot be removed in a state dict"
    if site.style == "module" and sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == site.module_path) != 1:
        return [], f"{site.module_path} is called more than once"
    users = list(site.node.users)
    if not users:
        return [], "nothing reads its result"
    modules = dict(gm.named_modules())
    found = []
    for user in users:
        consumer, why = _consumer(gm, modules, site.node, user, swap_only)
        if why is not None:
            return [], why
        found.append(consumer)
    if any(c.kind == "linear" for c in found):
        rank = _input_rank(gm, site, example) if rank is None else rank
        if rank != 2:
            why = UNKNOWN_RANK if rank is None else f"{rank}-D"
            return [], f"its input is {why}: a Linear after it multiplies the last axis, not the BN channels"
    return found, None


def _consumer(gm: fx.GraphModule, modules: dict, bn: fx.Node, user: fx.Node, swap_only: bool) -> tuple[Consumer | None, str | None]:
    kind = _kind(user, modules)
    if kind not in ("conv", "linear"):
        return None, f"its result feeds {user.name}, not only conv/linear modules"
    if user.op == "call_module":
        if tuple(user.args) != (bn,) or user.kwargs:
            return None, f"{user.target} takes more than the BN result"
        if sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == user.target) != 1:
            return None, f"{user.target} is called more than once"
        shared = shared_weight_blocker(gm, user.target)
        if shared:
            return None, shared
        module = modules[user.target]
        return Consumer(user, kind, user.target, module=module, padding=getattr(module, "padding", 0),
                        padding_mode=getattr(module, "padding_mode", "zeros"), groups=int(getattr(module, "groups", 1))), None
    if swap_only:
        return None, f"{user.name} is a functional call, which a state dict cannot change"
    prod = fold_producer(modules, user)
    given = dict(zip(arg_names(user.target), user.args, strict=False)) | dict(user.kwargs)
    if prod is None or given.get("input") is not bn or any(a is bn for k, a in given.items() if k != "input"):
        return None, f"{user.name} does not take the BN result as its input alone, with stored weights"
    for target in (prod.weight_target, prod.bias_target):
        if target and sum(1 for n in gm.graph.nodes if n.op == "get_attr" and n.target == target) != 1:
            return None, f"{target} is read by more than one node"
    if any(len(n.users) != 1 for n in (given.get("weight"), given.get("bias")) if isinstance(n, fx.Node)):
        return None, f"the weight of {user.name} is shared"
    return Consumer(user, kind, prod.label, producer=prod, padding=given.get("padding", 0), groups=int(prod.groups)), None


def _input_rank(gm: fx.GraphModule, site: Site, example) -> int | None:
    val = site.node.meta.get("val")
    if val is not None and hasattr(val, "dim"):
        return int(val.dim())
    if example is None:
        return None
    return _run_ranks(gm, {site.node.name}, example).get(site.node.name)


def consumer_verdict(gm: fx.GraphModule, site: Site, *, rank: int | None = None) -> tuple[str | None, str | None]:
    """What :func:`fold_into_consumers` would do with ``site``, editing nothing: ``(label of the
    modules it would fold into, None)`` or ``(None, why not)``. ``rank``: the BN input's rank
    when the graph has no shape metadata (a Linear after the BN needs it 2-D); with neither,
    a Linear consumer answers ``(None, why)`` with :data:`UNKNOWN_RANK` in ``why``."""
    found, why = consumer_modules(gm, site, swap_only=False, example=None)
    if why is not None and UNKNOWN_RANK in why and rank is not None:
        found, why = consumer_modules(gm, site, swap_only=False, example=None, rank=rank)
    if why is not None:
        return None, why
    scale, shift = scale_shift(site)
    for consumer in found:
        weight, bias = consumer.tensors(gm)
        try:
            _new_params(consumer, weight, bias, scale, shift)
        except ValueError as exc:
            return None, f"{consumer.label}: {exc}"
    return ", ".join(f"{c.kind} {c.label}" for c in found), None


def fold_into_consumers(gm: fx.GraphModule, work: nn.Module, site: Site, *, swap_only: bool, example,
                        changed: set[str], checks: dict) -> tuple[str | None, str | None]:
    """Fold ``site`` into the convs/linears reading it: ``(label of them, None)``, or ``(None, why not)``."""
    found, why = consumer_modules(gm, site, swap_only=swap_only, example=example)
    if why is not None:
        return None, why
    scale, shift = scale_shift(site)
    planned = []
    for consumer in found:
        weight, bias = consumer.tensors(gm)
        try:
            planned.append((consumer, *_new_params(consumer, weight, bias, scale, shift)))
        except ValueError as exc:
            return None, f"{consumer.label}: {exc}"
    runs = []
    for consumer, new_w, new_b in planned:  # every consumer agreed: now edit them
        run = _capture(site, consumer)
        consumer.set(gm, site, new_w, new_b)
        run.folded, _ = consumer.call(site)
        runs.append(run)
    checks[site.layer.name] = ConsumersRun(site.layer.name, runs)
    if swap_only:
        graph_edits.set_submodule(work, site.module_path, nn.Identity())
    else:
        changed |= graph_edits.bn_attr_targets(site)
        graph_edits.replace_output(site, site.node.args[0])
    return ", ".join(f"{c.kind} {c.label}" for c, _, _ in planned), None


def fold_into_next(work: nn.Module, site: Site, ranks: dict[str, int], checks: dict) -> tuple[str | None, str | None]:
    """Module mode for untraced models: a BN module whose successor in its ``nn.Sequential`` is
    a conv/linear module (the Sequential feeds the BN output to it alone) folds into it; the
    BN module becomes ``nn.Identity``. ``ranks``: output ranks of BN modules (for a Linear)."""
    found = _next_in_sequential(work, site.layer.name)
    if found is None:
        return None, "no conv/linear module right after it in an nn.Sequential"
    name, module, kind = found
    if site.blockers or site.training or site.mean is None or site.var is None:
        return None, "; ".join(site.blockers) or "no running statistics to fold"
    registered = sum(1 for _, m in work.named_modules(remove_duplicate=False) if m is module)
    if registered > 1:
        return None, f"{name} is registered more than once (may be called twice)"
    shared = shared_weight_blocker(work, name)
    if shared:
        return None, shared
    if kind == "linear" and ranks.get(site.layer.name) != 2:
        return None, "its output is not known to be 2-D (N, C): a Linear after it multiplies the last axis"
    scale, shift = scale_shift(site)
    consumer = Consumer(None, kind, name, module=module, padding=getattr(module, "padding", 0),
                        padding_mode=getattr(module, "padding_mode", "zeros"), groups=int(getattr(module, "groups", 1)))
    try:
        new_w, new_b = _new_params(consumer, module.weight, module.bias, scale, shift)
    except ValueError as exc:
        return None, f"{name}: {exc}"
    run = _capture(site, consumer)
    consumer.set(work, site, new_w, new_b)
    run.folded, _ = consumer.call(site)
    checks[site.layer.name] = ConsumersRun(site.layer.name, [run])
    graph_edits.set_submodule(work, site.layer.name, nn.Identity())
    return f"{kind} {name}", None


def _next_in_sequential(root: nn.Module, bn_name: str) -> tuple[str, nn.Module, str] | None:
    parent_name, _, child = bn_name.rpartition(".")
    try:
        parent = root.get_submodule(parent_name) if parent_name else root
    except AttributeError:
        return None
    if type(parent) is not nn.Sequential:
        return None
    names = list(parent._modules)
    if child not in names or names.index(child) + 1 >= len(names):
        return None
    nxt = names[names.index(child) + 1]
    module = parent._modules[nxt]
    kind = module_kind(module)
    if kind not in ("conv", "linear"):
        return None
    return (f"{parent_name}.{nxt}" if parent_name else nxt), module, kind


def _new_params(consumer: Consumer, weight: torch.Tensor, bias, scale, shift) -> tuple[torch.Tensor, torch.Tensor]:
    w = weight.detach().cpu().numpy()
    b = None if bias is None else bias.detach().cpu().numpy()
    if consumer.kind == "linear":
        new_w, new_b = fold_math.fold_bn_before_linear(w, b, scale, shift)
    else:
        padding, mode = consumer.padding, consumer.padding_mode
        if mode == "zeros" and _padded(padding) and np.any(shift != 0):
            raise ValueError(f"{PADDED_REASON} (it zero-pads its input, padding={padding!r}, and the BN shift is not zero)")
        new_w, new_b = fold_math.fold_bn_before_conv(w, b, scale, shift, groups=consumer.groups, padding=padding, padding_mode=mode)
    return torch.from_numpy(new_w).to(weight.device), torch.from_numpy(new_b).to(weight.device)


def _padded(padding) -> bool:
    if isinstance(padding, str):
        return padding != "valid"
    return any(int(p) != 0 for p in np.ravel(np.asarray(padding)))


def _capture(site: Site, consumer: Consumer) -> PairRun:
    """The original side: the BN (its own statistics, float64) then a copy of the consumer."""
    before, geometry = consumer.call(site)
    mean, var, weight, bias = (None if t is None else t.detach().double().clone()
                               for t in (site.mean, site.var, site.weight, site.bias))
    eps = float(site.eps)

    def original(x: torch.Tensor) -> torch.Tensor:
        return before(F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps))

    return PairRun(site.layer.name, geometry=geometry, original=original, method=METHOD)
