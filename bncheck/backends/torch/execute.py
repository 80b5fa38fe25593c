"""Torch models as plain callables on numpy batches, for fold verification and timing."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.utils._pytree import tree_flatten


def as_tensors(batch: tuple) -> tuple:
    """A batch of numpy arrays as CPU tensors."""
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in batch)


def _outputs_to_numpy(out) -> list[np.ndarray]:
    leaves, _ = tree_flatten(out)
    return [leaf.detach().cpu().numpy() if isinstance(leaf, torch.Tensor) else np.asarray(leaf) for leaf in leaves]


def runner(fn):
    """``batch (tuple of arrays) -> list of numpy outputs`` around a torch callable."""

    def run(batch: tuple) -> list[np.ndarray]:
        with torch.no_grad():
            return _outputs_to_numpy(fn(*as_tensors(batch)))

    return run


def original_callable(source):
    """The user's model, in eval mode, without touching the user's object."""
    if source.format == "export":
        return source.program.module()
    module = source.module
    if isinstance(module, torch.jit.ScriptModule):
        work = module.copy() if hasattr(module, "copy") else module
        return work.eval()
    return copy.deepcopy(module).eval()


def callable_of(target):
    """What runs a folded model: an ExportedProgram's module, an nn.Module in eval mode."""
    if hasattr(target, "graph_signature"):  # ExportedProgram
        return target.module()
    if isinstance(target, nn.Module):
        return target.eval()
    return target


def timed_pair(source, folded_model, batch: tuple):
    """(original, folded) zero-argument callables on ``batch`` for the speed comparison."""
    original = original_callable(source)
    folded = callable_of(folded_model)
    args = as_tensors(batch)

    def run_original():
        with torch.no_grad():
            return original(*args)

    def run_folded():
        with torch.no_grad():
            return folded(*args)

    return run_original, run_folded
