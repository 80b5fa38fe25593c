"""The torch ops bncheck recognises in graphs: batch-norm calls and their producers (conv,
transposed conv, linear), as Python functions (``torch.fx``) or aten overloads
(``torch.export``), with the positions of their arguments."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

#: F.batch_norm's argument order differs from aten.batch_norm's / torch.batch_norm's.
F_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
ATEN_BN_ARGS = ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps")
ATEN_BN_NO_TRAINING_ARGS = ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps")

#: aten batch-norm ops of exported graphs and the positions of (weight, bias, mean, var,
#: training, momentum, eps)
EXPORT_BN_OPS = {
    "aten.batch_norm.default": (1, 2, 3, 4, 5, 6, 7),
    "aten._native_batch_norm_legit_no_training.default": (1, 2, 3, 4, None, 5, 6),
    "aten._native_batch_norm_legit_functional.default": (1, 2, 3, 4, 5, 6, 7),
    "aten._native_batch_norm_legit.default": (1, 2, 3, 4, 5, 6, 7),
    "aten.native_batch_norm.default": (1, 2, 3, 4, 5, 6, 7),
    "aten.cudnn_batch_norm.default": (1, 2, 3, 4, 5, 6, 7),
}

#: (kind, position of ``groups`` (-1: none), position of the ``transposed`` flag) per producer op
_FUNCTIONAL_PRODUCERS = {
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
_ATEN_PRODUCERS = {
    **{f"aten.conv{d}.{overload}": ("conv", 6, None) for d in ("1d", "2d", "3d") for overload in ("default", "padding")},
    "aten.conv_transpose1d.default": ("convtranspose", 6, None),
    "aten.conv_transpose2d.input": ("convtranspose", 6, None),
    "aten.conv_transpose3d.input": ("convtranspose", 6, None),
    "aten.linear.default": ("linear", -1, None),
    "aten.convolution.default": ("conv", 8, 6),
}


def bn_signature(target) -> tuple[tuple[str, ...], bool] | None:
    """Argument names of a BN call target and whether it returns a tuple (output first)."""
    if target is F.batch_norm:
        return F_BN_ARGS, False
    if target is torch.batch_norm:
        return ATEN_BN_ARGS, False
    name = str(target)
    if name == "aten.batch_norm.default":
        return ATEN_BN_ARGS, False
    if name == "aten._native_batch_norm_legit_no_training.default":
        return ATEN_BN_NO_TRAINING_ARGS, True
    return None


def producer_signature(target) -> tuple[str, int, int | None] | None:
    """(kind, position of groups, position of the ``transposed`` flag) of a functional producer."""
    try:
        if target in _FUNCTIONAL_PRODUCERS:
            return _FUNCTIONAL_PRODUCERS[target]
    except TypeError:  # an unhashable target is no producer
        return None
    return _ATEN_PRODUCERS.get(str(target))


def arg(node: fx.Node, names: tuple[str, ...], name: str, default=None):
    """The argument ``name`` of a call node whose positional arguments are ``names``."""
    i = names.index(name)
    if i < len(node.args):
        return node.args[i]
    return node.kwargs.get(name, default)
