"""The consumer side of the torch inventory: a BN that its producer cannot take (a BN on the
model input, after an activation or a pooling) may still fold into the conv/linear modules
reading its result (:mod:`~bncheck.backends.torch.fold_before`), which the inventory says as
the ONNX one does of ``x -> BN -> Conv`` (``foldable`` and ``fold_reason``, so that audit's
BN011 and fold's outcome agree, and agree across backends).

The verdict is the fold's own (:func:`~bncheck.backends.torch.fold_before.consumer_verdict`),
on the graph the fold edits, editing nothing. A Linear after the BN needs the BN input 2-D:
known from export metadata or the BN class (``BatchNorm2d`` is 4-D); otherwise only fold,
running an example input, can tell, and the inventory says so (``foldable`` unknown).
"""

from __future__ import annotations

from torch import fx

from bncheck.backends.torch.fold_before import UNKNOWN_RANK, consumer_verdict, feeds_modules
from bncheck.backends.torch.fold_sites import find_sites
from bncheck.layer import BNLayer

#: how ``fold_reason`` starts for a BN that folds into the modules after it (as fold says it)
CONSUMER_REASON = "into the following "
#: the input rank of the BN classes that fix it
_CLASS_RANKS = {"BatchNorm2d": 4, "BatchNorm3d": 5, "SyncBatchNorm": None}


def candidates(layers: list[BNLayer]) -> list[BNLayer]:
    """The layers the consumer side may change: kept by their producer, with statistics to fold."""
    return [layer for layer in layers if layer.foldable is False and layer.uses_running_stats]


def consider_consumers(gm: fx.GraphModule, layers: list[BNLayer]) -> None:
    """Update ``foldable``/``fold_reason`` of the :func:`candidates` of ``layers`` (matched to
    the BN calls of ``gm``, the graph the fold edits) from the consumer side."""
    names = {layer.name for layer in candidates(layers)}
    if not names:
        return
    sites, _ = find_sites(gm, layers)
    for site in sites:
        layer = site.layer
        if layer.name not in names or not feeds_modules(gm, site):
            continue
        into, why = consumer_verdict(gm, site, rank=_CLASS_RANKS.get(layer.kind))
        if into is not None:
            layer.foldable, layer.fold_reason = True, f"{CONSUMER_REASON}{into} (BN before it)"
        elif UNKNOWN_RANK in why:
            layer.foldable = None
            layer.fold_reason = (
                f"{layer.fold_reason}; it folds into the Linear after it only if its input is 2-D (N, C), "
                "which fold checks by running an example input"
            )
        else:
            layer.fold_reason = f"{layer.fold_reason}; not into the modules after it either: {why}"
