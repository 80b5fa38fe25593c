"""Small torch modules that the inventory and fold tests of both families build their cases
on: a conv feeding its BN alone (foldable) and a conv whose output also feeds a residual add
(not foldable). Import after ``pytest.importorskip("torch")``."""

from __future__ import annotations

import torch
from torch import nn


class Plain(nn.Module):
    """conv -> BN -> relu: the BN is foldable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Residual(nn.Module):
    """conv's output feeds the BN and a residual add: the BN is not foldable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y
