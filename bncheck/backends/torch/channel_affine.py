"""Inference batch norm as a per-channel multiply-add module, for BN layers that cannot be
folded (``bncheck fold --affine``)."""

from __future__ import annotations

import torch
from torch import nn


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
