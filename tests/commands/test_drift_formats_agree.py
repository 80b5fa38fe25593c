"""BN301's figures do not depend on the format a model is saved in: a small CNN (Conv-BN-ReLU
twice, a residual block, a BatchNorm1d head) whose statistics came from calibration batches in
train mode, on fresh images of the same kind. As a module it is cut into levels; traced,
scripted or exported (.pt2) it cannot be, and its whole-model passes stopped as "diverging"
after two (a new user's copy read top-1 agreement 85.9% against 94.5%): layers moved by less
than the tolerance but not for good (0.0115, then 0) were counted settled and hid the next
pass's progress. Now every format reads the module's figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bncheck
from bncheck.commands.drift import DriftOptions


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32)
        self.res = _Block(32)
        self.fc1, self.bn3, self.fc2 = nn.Linear(32, 24), nn.BatchNorm1d(24), nn.Linear(24, 10)

    def forward(self, x):
        x = self.res(F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))))
        return self.fc2(F.relu(self.bn3(self.fc1(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))))


def _images(n: int, seed: int) -> np.ndarray:
    """Smooth random fields with per-channel means, as 0-255 images scaled to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.randn(n, 3, 8, 8, generator=g), size=(32, 32), mode="bilinear", align_corners=False)
    x = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1) + 0.18 * (x + 0.3 * torch.randn(n, 3, 32, 32, generator=g))
    return ((x.clamp(0, 1) * 255).round() / 255).numpy().astype(np.float32)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = _Small()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a cumulative average of the calibration batches' statistics
    net.train()
    calibration = torch.from_numpy(_images(1024, seed=1))
    with torch.no_grad():
        for i in range(0, len(calibration), 128):
            net(calibration[i : i + 128])
    return net.eval()


def test_every_format_reads_the_state_dicts_bn301_figures(model, tmp_path):
    x = _images(128, seed=2)
    options = DriftOptions(train_batch_size=0)
    reference = bncheck.drift(model, x, options=options).result.train_eval
    assert reference.refinement_method == "level by level" and reference.refinement_converged
    example = torch.from_numpy(x[:4])
    files = {"trace.pt": lambda p: torch.jit.trace(model, example).save(str(p)),
             "script.ts": lambda p: torch.jit.script(model).save(str(p)),
             "program.pt2": lambda p: torch.export.save(torch.export.export(model, (example,)), str(p))}  # fmt: skip
    for name, save in files.items():
        path = tmp_path / name
        save(path)
        te = bncheck.drift(path, x, options=options).result.train_eval
        assert te.refinement_method == "fixed-point passes" and te.refinement_converged, (name, te.refinement_method)
        assert te.refinement_passes <= 6
        assert te.top1_agreement == pytest.approx(reference.top1_agreement, abs=1 / len(x)), name
        assert te.relative_error == pytest.approx(reference.relative_error, rel=1e-4), name
