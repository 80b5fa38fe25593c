"""A small CNN trained on a synthetic 4-class task, and copies of it whose BN running statistics
were accumulated on differently shifted inputs (the weights are the same), exported to ONNX and
TorchScript, for the ranking tests of ``bncheck drift M1 M2 ... DATA``.

The task: per-sample Gaussian noise (3, 8, 8) plus one of four class templates. The classes
differ in where the template's energy is, so what BN does to the feature maps decides the
prediction: a copy normalised with statistics of shifted inputs misreads DATA.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

SHAPE = (3, 8, 8)


def templates(seed: int = 1) -> np.ndarray:
    """(4, 3, 8, 8) class templates."""
    return np.random.default_rng(seed).normal(0, 1, (4, *SHAPE)).astype(np.float32)


def task(count: int, seed: int, *, shift: float = 0.0, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` samples (x float32 (count, 3, 8, 8), y int64), x = scale * (noise + template) + shift."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, count)
    x = rng.normal(0, 1.0, (count, *SHAPE)).astype(np.float32) + 0.3 * templates()[y]
    return (scale * x + shift).astype(np.float32), y.astype(np.int64)


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc, self.bn3 = nn.Linear(16 * 4 * 4, 32, bias=False), nn.BatchNorm1d(32)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        x = torch.relu(self.bn3(self.fc(x.flatten(1))))
        return self.head(x)


def train(seed: int = 0, steps: int = 100) -> SmallCnn:
    """The CNN trained on the unshifted task (a few seconds on one CPU thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend on a shared machine
    try:
        return _train(seed, steps)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int, steps: int) -> SmallCnn:
    torch.manual_seed(seed)
    model = SmallCnn()
    x, y = task(2048, seed=100)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        index = torch.from_numpy(np.random.default_rng(step).integers(0, len(x), 64))
        loss = nn.functional.cross_entropy(model(torch.from_numpy(x)[index]), torch.from_numpy(y)[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def with_statistics_of(model: SmallCnn, x: np.ndarray) -> SmallCnn:
    """A copy of ``model`` whose BN running statistics are the cumulative average over ``x``
    (what ``torch.optim.swa_utils.update_bn`` computes); the weights are unchanged."""
    copy = SmallCnn()
    copy.load_state_dict(model.state_dict())
    for bn in (copy.bn1, copy.bn2, copy.bn3):
        bn.reset_running_stats()
        bn.momentum = None
    copy.train()
    with torch.no_grad():
        for start in range(0, len(x), 64):
            copy(torch.from_numpy(x[start : start + 64]))
    return copy.eval()


def accuracy(model: SmallCnn, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def export_onnx(model: SmallCnn, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(2, *SHAPE),), str(path), input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=False, opset_version=17, dynamo=False,
        )  # fmt: skip
    return path


def export_torchscript(model: SmallCnn, path: Path) -> Path:
    torch.jit.script(model).save(str(path))
    return path
