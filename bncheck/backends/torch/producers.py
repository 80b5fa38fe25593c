"""The one producer finder: which conv / transposed conv / linear op feeds a batch-norm call in
an FX graph (``torch.fx`` traces, torch.export graphs and their unlifted modules), used by the
inventory (is the BN foldable?) and by the fold (what to rewrite)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx

from bncheck.backends.torch.ops import producer_signature
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
class ProducerCall:
    """A conv / convtranspose / linear call in an FX graph and the tensors it multiplies with."""

    kind: str  # conv | convtranspose | linear
    node: fx.Node
    #: call_module producers: the module's path
    module_path: str | None = None
    #: functional producers: the weight and bias argument nodes (get_attr, placeholder, or computed)
    weight: object = None
    bias: object = None
    #: as written in the graph (an int, or for a functional call whatever was passed)
    groups: object = 1


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


def producer_call(node, modules: dict) -> ProducerCall | None:
    """The producer call ``node`` is (``modules``: the graph owner's ``named_modules()``), or None."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_module":
        module = modules.get(node.target)
        kind = module_kind(module) if module is not None else None
        if kind is None:
            return None
        return ProducerCall(kind, node, module_path=node.target, groups=int(getattr(module, "groups", 1)))
    if node.op != "call_function":
        return None
    sig = producer_signature(node.target)
    if sig is None:
        return None
    kind, groups_at, transposed_at = sig
    if transposed_at is not None:
        transposed = node.args[transposed_at] if len(node.args) > transposed_at else node.kwargs.get("transposed", False)
        kind = "convtranspose" if transposed else "conv"
    groups = 1
    if groups_at >= 0:
        groups = node.args[groups_at] if len(node.args) > groups_at else node.kwargs.get("groups", 1)
    return ProducerCall(
        kind,
        node,
        weight=node.args[1] if len(node.args) > 1 else node.kwargs.get("weight"),
        bias=node.args[2] if len(node.args) > 2 else node.kwargs.get("bias"),
        groups=groups,
    )


def shared_weight_blocker(root, module_name: str) -> str | None:
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
