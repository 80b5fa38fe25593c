"""Writing PyTorch models: TorchScript, torch.export programs, pickled modules, state dicts."""

from __future__ import annotations

from pathlib import Path

import torch

from bncheck.backends.output import write_atomically


def write_torchscript(module, out: Path) -> list[Path]:
    write_atomically(Path(out), lambda tmp: torch.jit.save(module, tmp))
    return [Path(out)]


def write_export(program, out: Path) -> list[Path]:
    write_atomically(Path(out), lambda tmp: torch.export.save(program, tmp))
    return [Path(out)]


def write_pickle(module, out: Path) -> list[Path]:
    """A whole pickled module (``torch.save(module)``); reading it back needs trust."""
    write_atomically(Path(out), lambda tmp: torch.save(module, tmp))
    return [Path(out)]


def write_state_dict(state: dict, out: Path, metadata: dict[str, str] | None = None) -> list[Path]:
    """A state dict: safetensors for ``.safetensors`` (with ``metadata`` in its header),
    ``torch.save`` of the plain dict otherwise (loads with ``weights_only=True``)."""
    out = Path(out)
    plain = _owned({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    if out.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        meta = {"format": "pt", **(metadata or {})}
        write_atomically(out, lambda tmp: save_file(plain, tmp, metadata=meta))
    else:
        write_atomically(out, lambda tmp: torch.save(plain, tmp))
    return [out]


def write_checkpoint(checkpoint: dict, out: Path) -> list[Path]:
    """A checkpoint container (``torch.save``; loads with ``weights_only=True`` as the one it
    came from did), its tensors with their own contiguous storage."""
    out = Path(out)
    plain = _owned(checkpoint)
    write_atomically(out, lambda tmp: torch.save(plain, tmp))
    return [out]


def _owned(value):
    """``value`` with every tensor (in nested dicts too) on its own contiguous CPU storage:
    safetensors refuses shared or strided storage, and a checkpoint must not pin the model's."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().clone()
    if isinstance(value, dict):
        return {k: _owned(v) for k, v in value.items()}
    return value
