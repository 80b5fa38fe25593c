"""The graph inputs of an ONNX model as :class:`~bncheck.backends.interface.InputSpec`: the one
reader for the runner (which feeds the single input) and fold verification (every input)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from bncheck.backends.interface import InputSpec
from bncheck.errors import UsageError


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Every graph input that is not an initializer, in graph order."""
    inits = {i.name for i in model.graph.initializer}
    return [_spec(vi) for vi in model.graph.input if vi.name not in inits]


def input_spec(model: onnx.ModelProto) -> InputSpec:
    """The first graph input that is not an initializer (the one a runner feeds)."""
    specs = input_specs(model)
    if not specs:
        raise UsageError("the ONNX model has no input to feed data into.")
    return specs[0]


def _spec(vi: onnx.ValueInfoProto) -> InputSpec:
    """``shape`` None when the rank is unknown; a rank-0 input has no batch axis; dynamic or
    unknown dimensions are None; the dtype is float32 when the type does not say."""
    ttype = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    dtype = _dtype_name(ttype.elem_type) if ttype is not None else "float32"
    if ttype is None or not ttype.HasField("shape"):
        return InputSpec(name=vi.name, shape=None, dtype=dtype)
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in ttype.shape.dim]
    if not dims:
        return InputSpec(name=vi.name, shape=(), dtype=dtype, batched=False)
    return InputSpec(name=vi.name, shape=tuple(dims[1:]), dtype=dtype, batch=dims[0])


def _dtype_name(elem_type: int) -> str:
    if not elem_type:
        return "float32"
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return "float32"
