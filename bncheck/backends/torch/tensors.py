"""Looking up tensors in PyTorch modules: by dotted path, by attribute, by identity."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter


def first_not_none(*values):
    return next((v for v in values if v is not None), None)


def tensor_key(tensor) -> tuple[int, int]:
    """The identity of a tensor's storage (data pointer and size), stable across views of it."""
    return tensor.data_ptr(), tensor.numel()


def is_uninitialized(tensor) -> bool:
    """Whether ``tensor`` is a lazy module's placeholder (never materialised)."""
    return isinstance(tensor, (UninitializedParameter, UninitializedBuffer))


def resolve_tensor(module, target: str | None):
    """The tensor at dotted path ``target`` of ``module`` (parameter, buffer or attribute), or None."""
    if not target:
        return None
    obj: Any = module
    for part in target.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def get_attr_tensor(root, node) -> torch.Tensor | None:
    """The tensor a ``get_attr`` FX node reads, or None for any other node."""
    if getattr(node, "op", None) != "get_attr":
        return None
    return resolve_tensor(root, node.target)


def attr_tensor(module, name: str):
    """A module's tensor attribute, or None (absent, empty, or a lazy module's placeholder)."""
    try:
        value = getattr(module, name)
    except (AttributeError, RuntimeError):
        return None
    if not isinstance(value, torch.Tensor) or is_uninitialized(value):
        return None
    return value if value.numel() > 0 else None


def param_dtype_device(module):
    """dtype and device of a module's first floating-point parameter or buffer (float32, CPU if none)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.float32, torch.device("cpu")
