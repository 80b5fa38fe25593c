"""Model factories for the bncheck sample models.

Importable without side effects (no training, no scikit-learn import).  Use with
``bncheck ... --arch sample_models/architectures.py:digits_cnn`` (or ``:cancer_mlp``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN", "CancerMLP", "digits_cnn", "cancer_mlp"]


class DigitsCNN(nn.Module):
    """Small CNN for the 8x8 scikit-learn digits.

    Input: ``(N, 1, 8, 8)`` float in ``[0, 1]`` (pixel value / 16).  Output: 10 logits.
    BatchNorm layers: ``bn1`` (BatchNorm2d(16), after ``conv1``), ``bn2``
    (BatchNorm2d(32), after ``conv2``), ``bn3`` (BatchNorm1d(64), after ``fc1``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.bn3 = nn.BatchNorm1d(64)
        self.relu3 = nn.ReLU()
        self.dropout = nn.Dropout(0.2)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.flatten(self.pool(x))
        x = self.dropout(self.relu3(self.bn3(self.fc1(x))))
        return self.fc2(x)


class CancerMLP(nn.Module):
    """MLP for the raw (unscaled) Wisconsin breast-cancer features.

    Input: ``(N, 30)`` raw features.  Output: 2 logits (0 = malignant, 1 = benign,
    scikit-learn's encoding).  ``input_norm`` is a BatchNorm1d(30) applied directly
    to the raw input (standardisation trick); it is not preceded by a linear layer
    and therefore cannot be folded.  Then ``fc1`` -> ``bn1`` -> ReLU -> ``fc2`` ->
    ``bn2`` -> ReLU -> ``fc3``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.input_norm = nn.BatchNorm1d(30)
        self.fc1 = nn.Linear(30, 64)
        self.bn1 = nn.BatchNorm1d(64)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 32)
        self.bn2 = nn.BatchNorm1d(32)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(x)
        x = self.relu1(self.bn1(self.fc1(x)))
        x = self.relu2(self.bn2(self.fc2(x)))
        return self.fc3(x)


def digits_cnn() -> nn.Module:
    """Return an untrained :class:`DigitsCNN` (load a state dict into it)."""
    return DigitsCNN()


def cancer_mlp() -> nn.Module:
    """Return an untrained :class:`CancerMLP` (load a state dict into it)."""
    return CancerMLP()
