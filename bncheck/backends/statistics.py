"""Copies of a model with other running statistics: what ``recalibrate`` writes and what its
refinement passes run. One function per backend family, both behind :func:`with_statistics`."""

from __future__ import annotations

import copy

import numpy as np

from bncheck.backends.interface import ModelSource
from bncheck.errors import UsageError

#: layer name -> (running_mean, running_var) as float64 arrays
Statistics = dict[str, tuple[np.ndarray, np.ndarray]]


def with_statistics(source: ModelSource, stats: Statistics, *, num_batches: int | None = None) -> ModelSource:
    """A new source whose BN layers named in ``stats`` carry the given running statistics (cast
    to each tensor's own dtype); ``source`` is not modified. ``num_batches`` sets PyTorch's
    ``num_batches_tracked`` of those layers where the model has one."""
    if source.family == "onnx":
        return _onnx_with_statistics(source, stats)
    if source.family == "torch":
        return _torch_with_statistics(source, stats, num_batches)
    raise UsageError(f"cannot rewrite the statistics of a {source.format} model.")


def _check_shapes(name: str, mean: np.ndarray, var: np.ndarray, channels: int) -> None:
    if mean.shape != (channels,) or var.shape != (channels,):
        raise UsageError(f"statistics for {name} have {mean.shape[0]} channels; the layer has {channels}.")


# ---------------------------------------------------------------------------- ONNX


def _onnx_with_statistics(source, stats: Statistics):
    import onnx
    from onnx import numpy_helper

    from bncheck.backends.onnx.source import OnnxSource

    model = onnx.ModelProto()
    model.CopyFrom(source.model)
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    nodes = {(node.name or node.output[0]): node for node in graph.node if node.op_type == "BatchNormalization"}
    layers = {layer.name: layer for layer in source.bn_layers()}
    taken = set(inits) | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    for name, (mean, var) in stats.items():
        node = nodes.get(name)
        if node is None:
            raise UsageError(f"BN layer {name} is not a BatchNormalization node of the main graph; it cannot be rewritten.")
        _check_shapes(name, mean, var, layers[name].num_features)
        for slot, values in ((3, mean), (4, var)):
            current = node.input[slot]
            dtype = _onnx_dtype(current, inits, source)
            array = np.asarray(values, dtype=np.float64).astype(dtype)
            init = inits.get(current)
            if init is not None and uses.get(current, 0) == 1:
                init.CopyFrom(numpy_helper.from_array(array, current))
                continue
            # shared or computed (Constant / Cast chains): give this node its own initializer
            fresh = _unique(f"{name}.{'running_mean' if slot == 3 else 'running_var'}", taken)
            taken.add(fresh)
            graph.initializer.append(numpy_helper.from_array(array, fresh))
            node.input[slot] = fresh
    _prune_dead_constants(graph)
    clone = OnnxSource(model, path=source.path)
    return clone


def _onnx_dtype(name: str, inits, source) -> np.dtype:
    from onnx import helper

    if name in inits:
        return np.dtype(helper.tensor_dtype_to_np_dtype(inits[name].data_type))
    # a computed parameter (Constant / Cast chain): keep the dtype the BN node receives
    from bncheck.backends.onnx.graph import GraphIndex

    value = GraphIndex(source.model.graph, source.opset).constant(name)
    return np.dtype(value.dtype) if value is not None else np.dtype(np.float32)


def _unique(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


def _prune_dead_constants(graph) -> None:
    """Drop Constant/Cast/... nodes and initializers nothing consumes any more."""
    outputs = {o.name for o in graph.output}
    changed = True
    while changed:
        changed = False
        used = outputs | {i for n in graph.node for i in n.input}
        for node in list(graph.node):
            if node.op_type in ("Constant", "Cast", "Identity", "Expand", "Reshape", "Unsqueeze", "Squeeze", "CastLike"):
                if not any(o in used for o in node.output):
                    graph.node.remove(node)
                    changed = True
        used = outputs | {i for n in graph.node for i in n.input}
        for init in list(graph.initializer):
            if init.name not in used:
                graph.initializer.remove(init)
                changed = True


# ---------------------------------------------------------------------------- torch


def _torch_with_statistics(source, stats: Statistics, num_batches: int | None):
    import torch

    from bncheck.backends.torch.source import ExportSource, TorchModuleSource

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
                counter.fill_(int(num_batches))
        return ExportSource(program, path=source.path)
    if not isinstance(source, TorchModuleSource):
        raise UsageError(
            "a bare state dict cannot be recalibrated without its architecture; pass --arch package.module:factory."
        )
    module = copy.deepcopy(source.module)
    modules = dict(module.named_modules())
    layers = {layer.name: layer for layer in source.bn_layers()}
    for name, (mean, var) in stats.items():
        owner = modules.get("" if name == "<root>" else name)
        buffers = dict(owner.named_buffers(recurse=False)) if owner is not None else {}
        if "running_mean" not in buffers or "running_var" not in buffers:
            raise UsageError(f"BN layer {name} has no running_mean/running_var buffers to rewrite.")
        _check_shapes(name, np.asarray(mean), np.asarray(var), layers[name].num_features)
        with torch.no_grad():
            for key, values in (("running_mean", mean), ("running_var", var)):
                target = buffers[key]
                target.copy_(torch.as_tensor(np.asarray(values, np.float64), dtype=target.dtype))
            counter = buffers.get("num_batches_tracked")
            if counter is not None and num_batches is not None:
                counter.fill_(int(num_batches))
    clone = TorchModuleSource(module, path=source.path, format=source.format)
    clone.arch = getattr(source, "arch", None)
    return clone
