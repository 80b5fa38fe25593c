"""Small node builders shared by the runner's moments and train graphs."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

HALF_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


def reduce_mean(opset: int, x: str, out: str, axes: tuple[int, ...], inits: list) -> list:
    """ReduceMean keeping dims: axes as an attribute before opset 18, as an input from 18."""
    if opset < 18:
        return [helper.make_node("ReduceMean", [x], [out], axes=list(axes), keepdims=1)]
    name = out + "/axes"
    inits.append(numpy_helper.from_array(np.array(axes, np.int64), name))
    return [helper.make_node("ReduceMean", [x, name], [out], keepdims=1)]


def as_float(x: str, elem: int, prefix: str) -> tuple[list, str, int]:
    """Cast half-precision BN inputs to float32 before reducing them: (nodes, value, type)."""
    if elem in HALF_TYPES:
        return (
            [helper.make_node("Cast", [x], [prefix + "xf"], to=TensorProto.FLOAT)],
            prefix + "xf",
            TensorProto.FLOAT,
        )
    if elem == TensorProto.DOUBLE:
        return [], x, TensorProto.DOUBLE
    return [], x, TensorProto.FLOAT
