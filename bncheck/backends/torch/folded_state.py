"""Reading back a state dict written by ``bncheck fold ... -o X.safetensors``: the folded BN
layers' keys are gone, producers carry a bias, ``--affine`` layers carry ``scale``/``shift``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bncheck.backends.torch.channel_affine import ChannelAffine
from bncheck.backends.torch.inventory import is_bn_module
from bncheck.backends.torch.loading import load_safetensors, torch_load, unwrap_checkpoint


def load_folded_state_dict(model, path: str | Path):
    """Load a state dict written by ``bncheck fold ... -o X.safetensors`` into ``model`` (the
    original architecture, modified in place and returned): BN modules whose keys are absent
    become ``nn.Identity``, those with ``scale``/``shift`` keys become the per-channel affine
    map, and producers gain the bias the file holds for them; then a strict load."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        state = unwrap_checkpoint(load_safetensors(path), path)
    else:
        state = unwrap_checkpoint(torch_load(path, trust_pickle=False), path)
    modules = dict(model.named_modules())
    for name, module in list(modules.items()):
        if not name or not is_bn_module(module):
            continue
        own = [k for k in state if k.startswith(name + ".")]
        if f"{name}.scale" in state and f"{name}.shift" in state:
            shift = state[f"{name}.shift"]
            _replace(model, name, ChannelAffine.empty(int(shift.numel()), dtype=shift.dtype))
        elif not own:
            _replace(model, name, nn.Identity())
    for key, value in state.items():
        prefix, _, attr = key.rpartition(".")
        module = model.get_submodule(prefix) if prefix else model
        if attr == "bias" and getattr(module, "bias", "absent") is None:
            module.bias = nn.Parameter(torch.zeros_like(value))
    model.load_state_dict(state, strict=True)
    return model


def _replace(root, path: str, module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)
