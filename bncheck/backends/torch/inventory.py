"""The inventory of a PyTorch module's batch-norm layers: which modules are BN-like, a
:class:`BNLayer` for each (eager or TorchScript), and what folding it into its producer
would take."""

from __future__ import annotations

from typing import Any

import torch

from bncheck.backends.torch.producers import Producer
from bncheck.backends.torch.tensors import is_uninitialized
from bncheck.layer import BNLayer

BN_CLASS_NAMES = {
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
}


def is_bn_module(module) -> bool:
    """BatchNorm1d/2d/3d, SyncBatchNorm, lazy variants, and any module holding
    ``running_mean`` and ``running_var`` buffers itself (frozen BN), but not InstanceNorm."""
    if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm):
        return False
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return True
    original = getattr(module, "original_name", None)
    if original and "InstanceNorm" in original:
        return False
    if original in BN_CLASS_NAMES:
        return True
    own = dict(module.named_buffers(recurse=False))
    return "running_mean" in own and "running_var" in own


def _kind_name(module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


#: Ops a frozen BN may apply to running_var before adding eps (torchvision reshapes first).
_SCRIPT_VIEW_OPS = ("aten::reshape", "aten::view", "aten::unsqueeze", "aten::flatten")


def _script_bn_constants(module) -> dict[str, Any]:
    """eps / momentum / training as constants of a TorchScript BN's ``aten::batch_norm`` call
    (traced modules keep no attributes)."""
    try:
        graph = module.graph
    except (AttributeError, RuntimeError):
        return {}
    running_var: set[str] = set()  # running_var and reshaped views of it
    for node in graph.nodes():
        if node.kind() == "aten::batch_norm":
            values = [inp.toIValue() for inp in node.inputs()]
            out = {}
            if len(values) >= 8:
                out["training"], out["momentum"], out["eps"] = values[5], values[6], values[7]
            return out
        if node.kind() == "prim::GetAttr" and node.s("name") == "running_var":
            running_var.add(node.output().debugName())
        elif node.kind() in _SCRIPT_VIEW_OPS and node.inputsAt(0).debugName() in running_var:
            running_var.add(node.output().debugName())
        elif node.kind() == "aten::add" and node.inputsAt(0).debugName() in running_var:
            # a frozen BN computes running_var + eps itself (e.g. torchvision's FrozenBatchNorm2d)
            eps = node.inputsAt(1).toIValue() if node.inputsAt(1).node().kind() == "prim::Constant" else None
            if hasattr(eps, "numel") and eps.numel() == 1:
                eps = eps.item()
            if isinstance(eps, float):
                return {"eps": eps}
    return {}



def layer_from_module(name: str, module) -> BNLayer:
    """A :class:`BNLayer` from an eager or TorchScript BN-like module."""
    buffers = dict(module.named_buffers(recurse=False))
    params = dict(module.named_parameters(recurse=False))
    kind = _kind_name(module)
    consts = _script_bn_constants(module) if hasattr(module, "graph") else {}
    eps = getattr(module, "eps", consts.get("eps"))
    is_std_bn = isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or kind in BN_CLASS_NAMES
    momentum = getattr(module, "momentum", consts.get("momentum")) if is_std_bn else None
    weight = params.get("weight", buffers.get("weight"))
    bias = params.get("bias", buffers.get("bias"))
    mean, var = buffers.get("running_mean"), buffers.get("running_var")
    notes: list[str] = []
    if mean is not None and is_uninitialized(mean):
        notes.append("lazy layer never materialised (no forward pass before saving)")
        mean = var = None
    if weight is not None and is_uninitialized(weight):
        weight = bias = None
    num_features = getattr(module, "num_features", None)
    if not isinstance(num_features, int) or num_features <= 0:
        ref = next((t for t in (mean, weight) if t is not None), None)
        num_features = int(ref.numel()) if ref is not None else 0
    nbt = buffers.get("num_batches_tracked")
    track = getattr(module, "track_running_stats", mean is not None)
    training = bool(module.training) if is_std_bn else None
    if training is None and kind not in BN_CLASS_NAMES:
        notes.append("frozen BN (always uses its stored statistics)")
    return BNLayer.from_arrays(
        name,
        kind,
        weight,
        bias,
        mean,
        var,
        num_features=num_features,
        eps=eps,
        momentum=momentum,
        momentum_convention="pytorch" if is_std_bn else "unknown",
        num_batches_tracked=int(nbt.item()) if nbt is not None and nbt.numel() == 1 else None,
        training=training,
        uses_running_stats=bool(track) and mean is not None and var is not None,
        assumed=[] if eps is not None else ["eps"],
        notes=notes,
    )


def apply_producer(layer: BNLayer, producer: Producer | None, reason_if_unknown: str) -> None:
    if producer is None:
        layer.producer, layer.producer_kind, layer.foldable = None, None, None
        layer.fold_reason = reason_if_unknown
        return
    layer.producer = producer.name
    layer.producer_kind = producer.kind
    layer.input_name = producer.bn_node
    blockers = list(producer.blockers)
    if not layer.uses_running_stats:
        blockers.append("no running statistics to fold")
    if producer.kind == "input":
        layer.foldable, layer.fold_reason = False, "normalises the model input directly (no producer op)"
    elif producer.kind not in ("conv", "convtranspose", "linear"):
        layer.foldable = False
        layer.fold_reason = f"fed by {producer.name or producer.kind}, not by a conv/linear"
    elif blockers:
        layer.foldable, layer.fold_reason = False, "; ".join(blockers)
    else:
        layer.foldable, layer.fold_reason = True, f"into {producer.kind} {producer.name}"



def functional_layers(module, functional) -> list[BNLayer]:
    """A :class:`BNLayer` per ``F.batch_norm`` call whose statistics no BN-like module holds."""
    out = []
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    for call in functional:
        mean = tensors.get(call.running_mean) if call.running_mean else None
        var = tensors.get(call.running_var) if call.running_var else None
        weight = tensors.get(call.weight) if call.weight else None
        bias = tensors.get(call.bias) if call.bias else None
        layer = BNLayer.from_arrays(
            call.name, "functional batch_norm", weight, bias, mean, var, eps=call.eps, momentum=call.momentum, training=call.training
        )
        apply_producer(layer, call.producer, "")
        out.append(layer)
    return out
