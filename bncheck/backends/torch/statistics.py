"""Copies of a PyTorch model with other running statistics (what ``recalibrate`` writes and
its refinement passes run)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from bncheck.backends.interface import ModelSource, Statistics, check_shapes
from bncheck.backends.torch.export_source import ExportSource
from bncheck.backends.torch.source import TorchModuleSource
from bncheck.errors import UsageError

#: the weight below which an EMA's initial values count as forgotten (see :func:`exact_counter`)
FORGOTTEN = 1e-6


def exact_counter(num_batches: int, momentum: float | None) -> int:
    """``num_batches_tracked`` for statistics that are exact averages over ``num_batches``
    batches (``recalibrate``'s estimate: no initial value is left in them). A layer that
    averages cumulatively (momentum None) weighs later batches by the counter: it gets the batch
    count. An EMA layer (0 < momentum < 1) reads the counter only as the updates made so far,
    and ``(1 - momentum) ** n`` is then the weight its initial values would still have (what
    BN006 checks): it gets at least the updates after which that weight is below
    :data:`FORGOTTEN` (132 at momentum 0.1), which exact statistics have by construction."""
    n = int(num_batches)
    if momentum is None or not 0.0 < float(momentum) < 1.0:
        return n
    return max(n, math.ceil(math.log(FORGOTTEN) / math.log(1.0 - float(momentum))))


def _momenta(source: ModelSource) -> dict[str, float | None]:
    return {layer.name: layer.momentum for layer in source.bn_layers()}


def with_statistics(source: ModelSource, stats: Statistics, num_batches: int | None = None) -> ModelSource:
    """A copy of ``source`` whose BN layers named in ``stats`` carry those running statistics;
    ``num_batches``: the batches those (exact) statistics average, written as each layer's
    ``num_batches_tracked`` as :func:`exact_counter` says."""
    momenta = _momenta(source) if num_batches is not None else {}
    if isinstance(source, ExportSource):
        program = copy.deepcopy(source.program)
        state = program.state_dict
        for name, (mean, var) in stats.items():
            for key, values in ((f"{name}.running_mean", mean), (f"{name}.running_var", var)):
                if key not in state:
                    raise UsageError(f"BN layer {name} keeps no {key} buffer in the torch.export program.")
                target = state[key]
                target.copy_(torch.as_tensor(np.asarray(values, np.float64), dtype=target.dtype))
            counter = state.get(f"{name}.num_batches_tracked")
            if counter is not None and num_batches is not None:
                counter.fill_(_counter(counter, num_batches, momenta.get(name)))
        return ExportSource(program, path=source.path)
    if not isinstance(source, TorchModuleSource):
        raise UsageError(
            "a bare state dict cannot be recalibrated without its architecture; pass --arch package.module:factory."
        )
    module = copy.deepcopy(source.module)
    modules = dict(module.named_modules())
    layers = {layer.name: layer for layer in source.bn_layers()}
    for name, (mean, var) in stats.items():
        buffers = _bn_buffers(modules, layers, name, mean, var)
        with torch.no_grad():
            for key, values in (("running_mean", mean), ("running_var", var)):
                target = buffers[key]
                target.copy_(torch.as_tensor(np.asarray(values, np.float64), dtype=target.dtype))
            counter = buffers.get("num_batches_tracked")
            if counter is not None and num_batches is not None:
                counter.fill_(_counter(counter, num_batches, momenta.get(name)))
    clone = TorchModuleSource(module, path=source.path, format=source.format)
    clone.arch = getattr(source, "arch", None)
    return clone


def _counter(counter, num_batches: int, momentum: float | None) -> int:
    """The counter written: :func:`exact_counter`, and for an EMA layer never below the one it
    had (a checkpoint trained for 3.9 million updates keeps them; its counter only says the
    initial values are forgotten, which they are)."""
    exact = exact_counter(num_batches, momentum)
    if momentum is None or not 0.0 < float(momentum) < 1.0:
        return exact
    return max(exact, int(counter.item()))


def _bn_buffers(modules: dict, layers: dict, name: str, mean: Any, var: Any) -> dict[str, torch.Tensor]:
    """The own buffers of BN layer ``name`` (``"<root>"``: the model itself), checked to hold
    running statistics of the shapes of ``mean`` and ``var``; a usage error otherwise."""
    owner = modules.get("" if name == "<root>" else name)
    buffers = dict(owner.named_buffers(recurse=False)) if owner is not None else {}
    if "running_mean" not in buffers or "running_var" not in buffers:
        raise UsageError(f"BN layer {name} has no running_mean/running_var buffers to rewrite.")
    check_shapes(name, np.asarray(mean), np.asarray(var), layers[name].num_features)
    return buffers


@contextmanager
def statistics_in_place(source: TorchModuleSource, stats: Statistics) -> Iterator[None]:
    """``source.module``'s BN buffers named in ``stats`` hold those statistics (copied into the
    same tensors, so runners observing them by identity keep working) until exit, when the
    stored values are copied back, whatever happened."""
    modules = dict(source.module.named_modules())
    layers = {layer.name: layer for layer in source.bn_layers()}
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name, (mean, var) in stats.items():
                buffers = _bn_buffers(modules, layers, name, mean, var)
                for key, values in (("running_mean", mean), ("running_var", var)):
                    target = buffers[key]
                    saved.append((target, target.clone()))
                    target.copy_(torch.as_tensor(np.asarray(values, np.float64), dtype=target.dtype))
        yield
    finally:
        with torch.no_grad():
            for target, original in reversed(saved):
                target.copy_(original)
