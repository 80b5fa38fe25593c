"""Folding the BN calls of an FX graph (a traced nn.Module or the unlifted module of a
torch.export program): each foldable site goes into its producer, the others are kept or,
with ``affine``, replaced by a :class:`ChannelAffine`.

*Graph mode*: the BN node's uses are rewired to the producer node and the node is erased;
the result is a ``GraphModule``. BN subclasses traced through (timm's ``BatchNormAct2d``:
``F.batch_norm`` then an activation) lose only the ``F.batch_norm`` call.
*Module mode* (``swap_only``, for state-dict and pickle outputs): the BN module is swapped
for ``nn.Identity`` in the eager copy, which keeps its own class, forward and key names.
"""

from __future__ import annotations

from torch import fx, nn

from bncheck.backends.interface import FoldedModel, FoldOutcome
from bncheck.backends.torch import fold_proof, graph_edits
from bncheck.backends.torch.fold_before import ConsumersRun, feeds_modules, fold_into_consumers
from bncheck.backends.torch.fold_sites import Site, find_sites, fold_blocker, propagate_ranks
from bncheck.backends.torch.fold_weights import affine_module, new_params
from bncheck.layer import BNLayer


def fold_graph(
    gm: fx.GraphModule, work: nn.Module, layers: list[BNLayer], *, affine: bool, swap_only: bool, example,
    keep: dict[str, str] | None = None,
) -> FoldedModel:
    """Fold every site of ``gm`` (edited in place) but those in ``keep`` (name -> reason). In
    module mode the swaps go to ``work``, the eager module ``gm`` was traced from (they share
    their submodules)."""
    sites, unmatched = find_sites(gm, layers)
    propagate_ranks(gm, sites, example)
    outcomes: dict[str, FoldOutcome] = {}
    checks: dict[str, fold_proof.PairRun | ConsumersRun] = {}
    changed: set[str] = set()
    left: list[tuple[Site, str]] = []
    for site in sites:
        kept = (keep or {}).get(site.layer.name)
        reason = kept or fold_blocker(site, swap_only)
        if reason is None:
            reason = _fold_site(gm, work, site, swap_only=swap_only, changed=changed, checks=checks)
        if reason is None:
            label = site.producer.label
            outcomes[site.layer.name] = FoldOutcome("folded", label, f"into {site.producer.kind} {label}")
        elif kept:
            outcomes[site.layer.name] = _maybe_affine(gm, work, site, reason, affine=affine, swap_only=swap_only, changed=changed)
        else:
            left.append((site, reason))
    for site, reason in left:  # into the modules after it, once every producer took its BN
        into, why = fold_into_consumers(gm, work, site, swap_only=swap_only, example=example, changed=changed, checks=checks)
        if into is not None:
            outcomes[site.layer.name] = FoldOutcome("folded", into, f"into the following {into} (BN before it)", side="consumer")
            continue
        if feeds_modules(gm, site):
            reason = f"{reason}; not into the modules after it either: {why}"
        outcomes[site.layer.name] = _maybe_affine(gm, work, site, reason, affine=affine, swap_only=swap_only, changed=changed)
    for layer in layers:
        if layer.name in unmatched:
            outcomes[layer.name] = FoldOutcome("kept", None, unmatched_reason(layer))
    if swap_only:
        return FoldedModel(model=work, outcomes=outcomes, extras={"mode": "module"}, site_checks=dict(checks))
    gm.graph.lint()
    gm.recompile()
    graph_edits.drop_unused_attrs(gm, changed)
    return FoldedModel(model=gm, outcomes=outcomes, extras={"mode": "graph"}, site_checks=dict(checks))


def _fold_site(gm: fx.GraphModule, work: nn.Module, site: Site, *, swap_only: bool, changed: set[str],
               checks: dict[str, fold_proof.PairRun]) -> str | None:
    """Fold one site into its producer (its proof's two sides recorded in ``checks``); why
    not (the fold math refused), or None."""
    try:
        new_w, new_b, old_w = new_params(site)
    except ValueError as exc:
        return str(exc)
    run = fold_proof.capture(site)
    graph_edits.set_producer_params(gm, site, new_w, new_b, old_w)
    fold_proof.complete(run, site)
    checks[site.layer.name] = run
    if swap_only:
        graph_edits.set_submodule(work, site.module_path, nn.Identity())
    else:
        changed |= graph_edits.bn_attr_targets(site)
        graph_edits.replace_output(site, site.producer.node)
    return None


def _maybe_affine(gm, work, site: Site, reason: str, *, affine: bool, swap_only: bool, changed: set[str]) -> FoldOutcome:
    if not affine:
        return FoldOutcome("kept", None, reason)
    if site.mean is None or site.var is None or site.training:
        return FoldOutcome("kept", None, f"{reason}; no affine map either (no running statistics)")
    if site.style == "module" and any("own forward" in b for b in site.blockers):
        return FoldOutcome("kept", None, f"{reason}; not replaced by an affine map (custom forward)")
    if swap_only and site.style != "module":
        return FoldOutcome("kept", None, f"{reason}; an affine map needs its own module call in a state dict")
    try:
        module = affine_module(site)
    except ValueError as exc:
        return FoldOutcome("kept", None, f"{reason}; {exc}")
    if site.style == "module":
        graph_edits.set_submodule(gm, site.module_path, module)
        if swap_only:
            graph_edits.set_submodule(work, site.module_path, module)
    else:
        path = graph_edits.unique_path(gm, f"{site.layer.name}_affine")
        gm.add_submodule(path, module)
        graph = site.node.graph
        with graph.inserting_before(site.node):
            new = graph.call_module(path, (site.node.args[0],))
        changed |= graph_edits.bn_attr_targets(site)
        graph_edits.replace_output(site, new)
    return FoldOutcome("affine", None, f"kept as x*scale+shift (torch.addcmul): {reason}")


def unmatched_reason(layer: BNLayer) -> str:
    """Why an inventory layer with no BN call in the traced graph is kept."""
    if layer.foldable is False and layer.fold_reason:
        return layer.fold_reason
    return (
        "no batch-norm call for it in the traced graph: its forward computes the normalisation "
        "with elementwise ops (or it is not called), which bncheck does not rewrite"
    )
