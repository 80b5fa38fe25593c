"""Whether a batch-norm module computes exactly inference BN, so that folding it (or swapping
it for an affine map) keeps the model's output."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def standard_bn_forward(module: nn.Module) -> bool:
    """Whether ``module`` runs the stock BN forward (so swapping it for an affine map is exact)."""
    forward = type(module).forward
    return forward in (_BatchNorm.forward, nn.SyncBatchNorm.forward)


def behaves_like_bn(module: nn.Module, eps: float | None) -> bool:
    """Whether a BN-like module (not a stock BN class) computes exactly inference BN with its
    stored statistics and ``eps``: checked by running it on random input (in eval mode)."""
    own = {**dict(module.named_buffers(recurse=False)), **dict(module.named_parameters(recurse=False))}
    mean, var = own.get("running_mean"), own.get("running_var")
    eps = getattr(module, "eps", eps)
    if mean is None or var is None or not isinstance(eps, (int, float)) or not mean.is_floating_point():
        return False
    weight, bias = own.get("weight"), own.get("bias")
    c = mean.numel()
    g = torch.Generator().manual_seed(0)
    for shape in ((2, c, 3, 3), (2, c), (2, c, 3), (2, c, 2, 2, 2)):
        x = torch.randn(shape, generator=g, dtype=mean.dtype)
        try:
            with torch.no_grad():
                y = module(x)
        except Exception:
            continue
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            return False
        view = [1, -1] + [1] * (x.dim() - 2)
        ref = (x.double() - mean.double().view(view)) / torch.sqrt(var.double().view(view) + eps)
        if weight is not None:
            ref = ref * weight.double().view(view)
        if bias is not None:
            ref = ref + bias.double().view(view)
        return bool(torch.allclose(y.double(), ref, rtol=1e-4, atol=1e-5))
    return False


def foldable_bn_module(module: nn.Module, eps: float | None) -> bool:
    """A stock BN forward, or a BN-like one that computes exactly inference BN."""
    return standard_bn_forward(module) or behaves_like_bn(module, eps)
