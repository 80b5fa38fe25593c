"""``--affine``: a BN that cannot be folded but uses constant running statistics becomes
``Mul(x, scale) -> Add(., shift)`` with per-channel constants shaped ``(C, 1, ..., 1)`` (opset
7+, numpy broadcasting), in the input's element type."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from bncheck.backends.onnx.fold_edits import CannotFold, GraphEdits, Rewrite


class InputTypes:
    """Rank and element type of the main graph's values, by shape inference on the model
    before it is edited (run once, on first use)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._inferred: dict[str, tuple[int | None, int | None]] | None = None

    def rank_and_type(self, name: str) -> tuple[int | None, int | None]:
        if self._inferred is None:
            self._inferred = _infer(self._model)
        return self._inferred.get(name, (None, None))


def affine_rewrite(
    edits: GraphEdits, bn: onnx.NodeProto, s: np.ndarray, t: np.ndarray, types: InputTypes, opset: int
) -> Rewrite:
    """The Mul+Add that replace ``bn`` (scale ``s``, shift ``t``)."""
    x, y = bn.input[0], bn.output[0]
    rank, elem = types.rank_and_type(x)
    if elem is None:
        elem = edits.index.elem_type(bn.input[1]) or onnx.TensorProto.FLOAT
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    label = bn.name or y
    rewrite = Rewrite(bn=bn, released=[n for n in bn.input[1:5] if n])
    if opset < 7:
        raise CannotFold("Mul/Add before opset 7 broadcast differently; re-export at opset 7 or later")
    if rank is None:
        raise CannotFold("the rank of its input is unknown (shape inference failed)")
    shape = (s.size,) + (1,) * max(rank - 2, 0)
    scale = edits.add_initializer(_cast_checked(s, dtype).reshape(shape), f"{label}.affine_scale")
    shift = edits.add_initializer(_cast_checked(t, dtype).reshape(shape), f"{label}.affine_shift")
    mid = edits.unique(f"{y}_scaled")
    rewrite.replacement = [
        helper.make_node("Mul", [x, scale], [mid], name=edits.unique(f"{label}/affine_mul")),
        helper.make_node("Add", [mid, shift], [y], name=edits.unique(f"{label}/affine_add")),
    ]
    return rewrite


def _infer(model: onnx.ModelProto) -> dict[str, tuple[int | None, int | None]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference fails on some valid models
        inferred = model
    result = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        rank = len(tt.shape.dim) if tt.HasField("shape") else None
        result[vi.name] = (rank, tt.elem_type or None)
    return result


def _cast_checked(values: np.ndarray, dtype) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = np.asarray(values, dtype=np.float64).astype(dtype)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"the per-channel scale/shift overflows {np.dtype(dtype).name}")
    return out
