"""Checks shared by the runner tests of both backends: the input of every BN module captured
with plain torch hooks, float64 reference moments, and the digits sample models."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bncheck.backends import load_model
from bncheck.backends.torch.export_source import ExportSource
from bncheck.numerics.moments import Moments
from support.fold_fixtures import export_keeping_bn

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
ARCH = f"{SAMPLES / 'architectures.py'}:digits_cnn"
DIGITS = {
    "eager": ("digits_cnn.pt", ARCH),
    "torchscript": ("digits_cnn.ts", None),
    "export": ("digits_cnn.pt2", None),
    "onnx": ("digits_cnn.onnx", None),
}


def bn_inputs(model, x: np.ndarray, *, train: bool = False) -> dict[str, np.ndarray]:
    """The input of every BN-like module of an eager model, captured with plain forward
    pre-hooks on a deep copy, as float64 arrays. ``train``: torch's train mode (dropout p=0)."""
    model = copy.deepcopy(model)
    captured: dict[str, np.ndarray] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) or hasattr(module, "running_var"):

            def hook(mod, args, name=name):
                captured[name] = args[0].detach().double().numpy()

            handles.append(module.register_forward_pre_hook(hook))
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.train(train)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    for handle in handles:
        handle.remove()
    captured["<output>"] = out.double().numpy()
    return captured


def reference_moments(array: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    axes = (0,) + tuple(range(2, array.ndim))
    return array.size // array.shape[1], array.mean(axis=axes), array.var(axis=axes)


def assert_moments(m: Moments, array: np.ndarray, *, rtol: float) -> None:
    count, mean, var = reference_moments(array)
    assert m.count == count
    std = np.sqrt(var)
    np.testing.assert_allclose(m.mean, mean, rtol=rtol, atol=rtol * (std.max() + 1e-12))
    np.testing.assert_allclose(m.var, var, rtol=rtol, atol=rtol * var.max() * 1e-3)


def state_of(source) -> dict[str, torch.Tensor]:
    if isinstance(source, ExportSource):
        return {k: v.detach().clone() for k, v in source.program.state_dict.items()}
    return {k: v.detach().clone() for k, v in source.module.state_dict().items()}


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def export_onnx(model, example, path: Path, *, opset: int = 17) -> Path:
    """ONNX export of an eager model that keeps its BN nodes (as the fold tests export)."""
    return export_keeping_bn(model, example, path, opset=opset)


def randomise_bn(model, seed: int = 0):
    """Running statistics and affine parameters far from their defaults (eval != train)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=gen))
                module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(c, generator=gen))
                module.num_batches_tracked.fill_(100)
    return model.eval()


def load_digits(kind: str):
    path, arch = DIGITS[kind]
    return load_model(SAMPLES / path, arch=arch)
