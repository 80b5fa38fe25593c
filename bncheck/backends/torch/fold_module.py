"""Folding an ``nn.Module`` (from ``--arch``, a pickle, or the API); the user's module is never
modified: the copy is traced with ``torch.fx`` in eval mode and folded on its graph
(:mod:`~bncheck.backends.torch.fold_graph`). A BN folds when the inventory found it foldable
(the producer's output feeds nothing else, the producer module is called once, its weight is
not shared) and, for a Linear producer, when shape propagation shows a 2-D ``(N, C)`` output
(``BatchNorm1d`` on ``(N, C, L)`` normalises axis 1 while Linear acts on the last axis).

Models torch.fx cannot trace fall back to module mode on exact ``nn.Sequential`` patterns
(a conv/linear immediately followed by a standard BN in the same Sequential).
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from bncheck.backends.interface import FoldedModel, FoldOutcome
from bncheck.backends.torch import fold_proof, graph_edits
from bncheck.backends.torch.bn_like import behaves_like_bn, foldable_bn_module, standard_bn_forward
from bncheck.backends.torch.fold_before import ConsumersRun, fold_into_next
from bncheck.backends.torch.fold_graph import fold_graph
from bncheck.backends.torch.fold_sites import FoldProducer, module_site
from bncheck.backends.torch.fold_weights import affine_module, new_params
from bncheck.backends.torch.graph import sequential_producers, trace_with_defaults
from bncheck.backends.torch.producers import Producer
from bncheck.layer import BNLayer


def fold_module(
    module: nn.Module,
    layers: list[BNLayer],
    *,
    affine: bool = False,
    swap_only: bool = False,
    example: tuple | None = None,
    keep: dict[str, str] | None = None,
) -> FoldedModel:
    """Fold a copy of ``module``: graph mode (a GraphModule), or module mode (the eager copy
    with BN modules swapped for ``nn.Identity``) when ``swap_only``; the layers in ``keep``
    (name -> reason) stay."""
    work = copy.deepcopy(module).eval()
    try:
        gm = fold_trace(work, layers)
    except Exception as exc:  # untraceable Python in forward()
        result = _fold_sequential(work, layers, affine=affine, example=example, keep=keep or {})
        result.notes.append(
            f"graph-mode folding needs a torch.fx trace ({type(exc).__name__}): BN modules were swapped for "
            "nn.Identity where the dataflow shows their producer module alone feeds them"
        )
        return result
    return fold_graph(gm, work, layers, affine=affine, swap_only=swap_only, example=example, keep=keep)


class _FoldTracer(fx.Tracer):
    """symbolic_trace, except that BN-like modules which compute exactly inference BN (e.g. a
    frozen BN) stay single ``call_module`` nodes; BN subclasses with extra behaviour (an
    activation) are traced through, so that their ``F.batch_norm`` call can be removed alone."""

    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def fold_trace(work: nn.Module, layers: list[BNLayer]) -> fx.GraphModule:
    """The GraphModule graph-mode folding edits (``work`` itself is not changed by tracing)."""
    modules = dict(work.named_modules())
    leaves = set()
    for layer in layers:
        module = modules.get(layer.name)
        if module is not None and not standard_bn_forward(module) and behaves_like_bn(module, layer.eps):
            leaves.add(layer.name)
    tracer = _FoldTracer(leaves)
    graph = trace_with_defaults(tracer, work)
    return fx.GraphModule(tracer.root, graph, type(work).__name__)


def _fold_sequential(work: nn.Module, layers: list[BNLayer], *, affine: bool, example: tuple | None,
                     keep: dict[str, str]) -> FoldedModel:
    """Module mode for untraceable models: exact ``nn.Sequential`` conv/linear -> BN pairs."""
    modules = dict(work.named_modules())
    producers = sequential_producers(work, {layer.name for layer in layers})
    for layer in layers:  # producers the inventory found on a dataflow graph (torch.jit.trace)
        if layer.name not in producers and layer.foldable and layer.producer in modules:
            producers[layer.name] = Producer(name=layer.producer, kind=layer.producer_kind)
    bn_modules = {layer.name for layer in layers if layer.name in modules}  # their output ranks: for a Linear after them
    ranks = _hook_ranks(work, {p.name for p in producers.values() if p.kind == "linear"} | bn_modules, example)
    outcomes: dict[str, FoldOutcome] = {}
    checks: dict[str, fold_proof.PairRun | ConsumersRun] = {}
    left = []
    for layer in layers:
        prod = producers.get(layer.name)
        bn = modules.get(layer.name)
        reason = keep.get(layer.name) or _sequential_blocker(layer, prod, bn, ranks)
        site = None
        if bn is not None and getattr(bn, "running_mean", None) is not None:
            site = module_site(layer, bn, None, training=False)
        if reason is None:
            producer_module = modules[prod.name]
            site.producer = FoldProducer(kind=prod.kind, label=prod.name, node=None, module=producer_module,
                                         groups=int(getattr(producer_module, "groups", 1)))
            try:
                new_w, new_b, old_w = new_params(site)
            except ValueError as exc:
                reason = str(exc)
            else:
                run = fold_proof.capture(site)
                graph_edits.set_producer_params(work, site, new_w, new_b, old_w)
                fold_proof.complete(run, site)
                checks[layer.name] = run
                graph_edits.set_submodule(work, layer.name, nn.Identity())
                outcomes[layer.name] = FoldOutcome("folded", prod.name, f"into {prod.kind} {prod.name}")
                continue
        if layer.name in keep or site is None or not foldable_bn_module(bn, layer.eps):
            outcomes[layer.name] = _swap_or_keep(work, layer, bn, site, reason, affine=affine)
        else:
            left.append((layer, bn, site, reason))
    for layer, bn, site, reason in left:  # into the module after it, once every producer took its BN
        into, why = fold_into_next(work, site, ranks, checks)
        if into is not None:
            outcomes[layer.name] = FoldOutcome("folded", into, f"into the following {into} (BN before it)", side="consumer")
            continue
        if not why.startswith("no conv/linear module right after it"):
            reason = f"{reason}; not into the module after it either: {why}"
        outcomes[layer.name] = _swap_or_keep(work, layer, bn, site, reason, affine=affine)
    return FoldedModel(model=work, outcomes=outcomes, extras={"mode": "module"}, site_checks=dict(checks))


def _sequential_blocker(layer: BNLayer, prod, bn, ranks: dict[str, int]) -> str | None:
    """Why an untraced BN must not be folded into its Sequential predecessor (None: fold it)."""
    if prod is None or bn is None:
        return layer.fold_reason or "no exact nn.Sequential producer (model not traceable)"
    if not prod.foldable:
        return "; ".join(prod.blockers) or f"fed by {prod.name}, not by a conv/linear"
    if not foldable_bn_module(bn, layer.eps):
        return f"{type(bn).__name__} has its own forward()"
    if bn.running_mean is None or bn.running_var is None:
        return "no running statistics to fold"
    if prod.kind == "linear" and ranks.get(prod.name) != 2:
        return "the Linear output is not known to be 2-D (N, C)"
    return None


def _swap_or_keep(work: nn.Module, layer: BNLayer, bn, site, reason: str, *, affine: bool) -> FoldOutcome:
    """With ``affine``, swap a kept BN module for its affine map where that is exact."""
    if affine and site is not None and foldable_bn_module(bn, layer.eps):
        try:
            graph_edits.set_submodule(work, layer.name, affine_module(site))
            return FoldOutcome("affine", None, f"kept as x*scale+shift (torch.addcmul): {reason}")
        except ValueError as exc:
            reason = f"{reason}; {exc}"
    return FoldOutcome("kept", None, reason)


def _hook_ranks(work: nn.Module, names: set[str], example: tuple | None) -> dict[str, int]:
    """Output ranks of the modules ``names`` when ``work`` runs on ``example`` ({} if it fails)."""
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
