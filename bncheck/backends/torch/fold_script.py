"""Folding a TorchScript module: ``torch.jit.freeze`` of an eval copy, whose own passes fold
Conv+BN and Linear+BN on the frozen graph (per call, in float32). Which layers it folded is
read back from the BN nodes left in the frozen graph; the result is only written as
TorchScript."""

from __future__ import annotations

import copy

import torch

from bncheck.backends.interface import FoldedModel, FoldOutcome
from bncheck.backends.torch.inventory import BN_CLASS_NAMES
from bncheck.backends.torch.script_proof import script_checks
from bncheck.layer import BNLayer

_NOT_ATTRIBUTABLE = (
    "a BN-like module without an aten::batch_norm call: torch.jit.freeze may merge its "
    "multiply-add into the conv, but bncheck cannot attribute that (verification covers the result)"
)


#: why TorchScript sites have no proof of their own
UNPROVED = (
    "folded by torch.jit.freeze, and no conv/linear of the frozen graph carries this layer's fold as a "
    "constant weight to prove on its own (whole-model verification covers it)"
)


def fold_torchscript(module, layers: list[BNLayer], keep: dict[str, str] | None = None) -> FoldedModel:
    """``torch.jit.freeze`` on an eval copy; its passes fold Conv/Linear + BN per call (all
    or nothing: with layers to ``keep``, nothing is frozen and every layer is kept)."""
    if keep:
        outcomes = {layer.name: FoldOutcome("kept", None, keep.get(layer.name, "kept with the others: " + next(iter(keep.values()))))
                    for layer in layers}
        return FoldedModel(model=module, outcomes=outcomes, extras={"mode": "freeze"})
    work = module.copy() if hasattr(module, "copy") else copy.deepcopy(module)
    work.eval()
    buffers = _running_means(work, layers)
    frozen = torch.jit.freeze(work)
    remaining = []
    for node in frozen.graph.findAllNodes("aten::batch_norm"):
        value = node.inputsAt(3).toIValue()
        if isinstance(value, torch.Tensor):
            remaining.append(value)
    outcomes = {layer.name: _outcome(layer, buffers.get(layer.name), remaining) for layer in layers}
    folded = {name for name, o in outcomes.items() if o.status == "folded"}
    checks = script_checks(module, frozen, layers, folded)
    return FoldedModel(model=frozen, outcomes=outcomes, extras={"mode": "freeze"}, site_checks=dict(checks),
                       unproved_reason=UNPROVED)


def _running_means(work, layers: list[BNLayer]) -> dict:
    """Each layer's own ``running_mean`` buffer (before freezing), by layer name."""
    buffers = {}
    modules = dict(work.named_modules())
    for layer in layers:
        bn = work if layer.name == "<root>" else modules.get(layer.name)
        if bn is None:
            continue
        mean = dict(bn.named_buffers(recurse=False)).get("running_mean")
        if mean is not None:
            buffers[layer.name] = mean
    return buffers


def _outcome(layer: BNLayer, mean, remaining: list) -> FoldOutcome:
    """Folded when the layer's running mean no longer feeds an ``aten::batch_norm`` of the frozen graph."""
    if layer.kind not in BN_CLASS_NAMES:
        return FoldOutcome("kept", None, _NOT_ATTRIBUTABLE)
    kept = mean is None or any(
        t.data_ptr() == mean.data_ptr() or (t.shape == mean.shape and torch.equal(t, mean)) for t in remaining
    )
    if not kept:
        into = layer.producer if layer.producer_kind in ("conv", "convtranspose", "linear") else "the preceding op"
        return FoldOutcome("folded", into, "folded by torch.jit.freeze on the frozen graph")
    if layer.foldable is False:
        return FoldOutcome("kept", None, layer.fold_reason)
    return FoldOutcome("kept", None, "torch.jit.freeze folds only Conv/Linear + BN patterns and did not fold this one")
