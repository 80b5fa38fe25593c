"""The new weights of a torch fold: tensors in, :mod:`bncheck.numerics.fold_math` (float64,
cast once) in the middle, tensors out."""

from __future__ import annotations

import numpy as np
import torch

from bncheck.backends.torch.channel_affine import ChannelAffine
from bncheck.backends.torch.fold_sites import Site
from bncheck.backends.torch.tensors import resolve_tensor
from bncheck.numerics import fold_math


def _vector(tensor) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().cpu().double().numpy().reshape(-1)


def scale_shift(site: Site) -> tuple[np.ndarray, np.ndarray]:
    """The site's inference BN as ``y = scale * x + shift`` (float64)."""
    return fold_math.bn_scale_shift(
        _vector(site.mean), _vector(site.var), site.eps, weight=_vector(site.weight), bias=_vector(site.bias)
    )


def new_params(site: Site) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(new weight, new bias, the weight tensor they replace) for a producer."""
    prod = site.producer
    scale, shift = scale_shift(site)
    if prod.module is not None:
        weight, bias = prod.module.weight, prod.module.bias
    else:
        owner = site.node.graph.owning_module
        weight = resolve_tensor(owner, prod.weight_target)
        bias = resolve_tensor(owner, prod.bias_target)
    w = weight.detach().cpu().numpy()
    b = None if bias is None else bias.detach().cpu().numpy()
    if prod.kind == "linear":
        new_w, new_b = fold_math.fold_bn_into_linear(w, b, scale, shift)
    else:
        new_w, new_b = fold_math.fold_bn_into_conv(
            w, b, scale, shift, transposed=prod.kind == "convtranspose", groups=prod.groups
        )
    return torch.from_numpy(new_w).to(weight.device), torch.from_numpy(new_b).to(weight.device), weight


def affine_module(site: Site) -> ChannelAffine:
    """The site's inference BN as a :class:`ChannelAffine` in the dtype of its statistics."""
    scale, shift = scale_shift(site)
    dtype = site.mean.dtype if site.mean is not None and site.mean.is_floating_point() else torch.float32
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    s, t = (np.asarray(v, dtype=np.float64).astype(np_dtype) for v in (scale, shift))
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))):
        raise ValueError(f"the per-channel scale/shift overflows {np_dtype}")
    return ChannelAffine(torch.from_numpy(s), torch.from_numpy(t))
