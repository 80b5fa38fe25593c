"""What a torch model's input looks like (an :class:`InputSpec`), read from its graph: eager
modules through torch.fx, TorchScript through its forward graph, torch.export programs
through their placeholders."""

from __future__ import annotations

import torch

from bncheck.backends.interface import InputSpec
from bncheck.backends.torch.tensors import param_dtype_device
from bncheck.errors import UsageError


def module_input_spec(module, dtype=None) -> InputSpec:
    """The input of an eager module: rank and channels when torch.fx shows that the input
    goes straight into a conv or a BatchNorm2d/3d, otherwise unknown."""
    dtype = dtype or param_dtype_device(module)[0]
    name, shape = "input", None
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # untraceable: the rank stays unknown
        graph = None
    if graph is not None:
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if placeholders:
            name = placeholders[0].name
            modules = dict(module.named_modules())
            users = [u for u in placeholders[0].users if u.op == "call_module"]
            if len(placeholders[0].users) == 1 and users:
                shape = _shape_from_first_module(modules.get(users[0].target))
    return InputSpec(name=name, shape=shape, dtype=_numpy_dtype_name(dtype))


def script_input_spec(module, dtype=None) -> InputSpec:
    """The input of a TorchScript module: its forward argument name; rank and channels when
    the input goes straight into a conv or a BatchNorm2d/3d submodule."""
    dtype = dtype or param_dtype_device(module)[0]
    name, shape = "input", None
    try:
        graph = module.graph
        inputs = list(graph.inputs())
    except (AttributeError, RuntimeError):
        inputs = []
    if len(inputs) >= 2:
        value = inputs[1]
        name = value.debugName().split(".")[0] or "input"
        uses = list(value.uses())
        if len(uses) == 1 and uses[0].user.kind() == "prim::CallMethod":
            callee = uses[0].user.inputsAt(0).node()
            if (
                callee.kind() == "prim::GetAttr"
                and callee.inputsAt(0).debugName() == inputs[0].debugName()
            ):
                child = getattr(module, callee.s("name"), None)
                shape = _shape_from_first_module(child)
    return InputSpec(name=name, shape=shape, dtype=_numpy_dtype_name(dtype))


def export_input_spec(program) -> InputSpec:
    """The first user input of a torch.export program, with its static dimensions."""
    user_inputs = list(program.graph_signature.user_inputs)
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    if not user_inputs or user_inputs[0] not in nodes:
        raise UsageError(
            "the torch.export program takes no tensor input; bncheck cannot feed it data."
        )
    if len(user_inputs) > 1:
        raise UsageError(
            f"the torch.export program takes {len(user_inputs)} inputs ({', '.join(user_inputs)}); "
            "bncheck feeds a single input tensor."
        )
    val = nodes[user_inputs[0]].meta.get("val")
    if not isinstance(val, torch.Tensor):
        return InputSpec(name=user_inputs[0], shape=None, dtype="float32")
    dims = [int(d) if isinstance(d, int) else None for d in val.shape]
    return InputSpec(
        name=user_inputs[0],
        shape=tuple(dims[1:]) if dims else None,
        dtype=_numpy_dtype_name(val.dtype),
        batch=dims[0] if dims else None,
    )


def _shape_from_first_module(child) -> tuple[int | None, ...] | None:
    if child is None:
        return None
    kind = getattr(child, "original_name", None) or type(child).__name__
    kind = kind.replace("Lazy", "")
    dims = {"Conv1d": 1, "Conv2d": 2, "Conv3d": 3, "BatchNorm2d": 2, "BatchNorm3d": 3}.get(kind)
    if dims is None:
        return None
    channels = getattr(child, "in_channels", None) or getattr(child, "num_features", None)
    if not isinstance(channels, int) or channels <= 0:
        return None
    return (channels,) + (None,) * dims



def _numpy_dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    return name if name in ("float32", "float64", "float16") else "float32"

