"""Bounds on the work a hostile ONNX file can make bncheck do before anything runs.

bncheck evaluates small constant subgraphs itself (BN parameters behind ``Constant``/
``Expand``/``Cast`` chains). A 210-byte file can ask for ``Expand(Constant 1.0, [200000000])``
and take gigabytes, so every node's output size is predicted from its constant inputs before
it is evaluated, and every stored tensor's declared dims are checked against the bytes that
back them. Real BN parameters are per-channel vectors: the cap is far above any of them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from bncheck.errors import ModelLoadError

#: The most elements a constant computed by bncheck may have (64 MiB of float32).
MAX_COMPUTED_ELEMENTS = 1 << 24
#: The most elements a stored tensor may declare (the largest real weight tensors are far below).
MAX_DECLARED_ELEMENTS = 1 << 33


def _refuse(what: str, elements: int, limit: int) -> None:
    raise ModelLoadError(
        f"{what} would hold {elements:,} elements, more than the {limit:,} bncheck evaluates; the "
        "model is broken or hostile: re-export it."
    )


def check_tensor(tensor: onnx.TensorProto, where: str = "") -> None:
    """A stored tensor's dims are non-negative, within the cap, and match its data."""
    name = f"tensor {tensor.name!r}" if tensor.name else "a constant tensor"
    what = f"{name}{where}"
    dims = list(tensor.dims)
    elements = _declared_elements(dims, what)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    stored = _stored_elements(tensor)
    if stored is not None and stored != elements:
        raise ModelLoadError(
            f"{what} declares dims {dims} ({elements:,} elements) but stores {stored:,}; the file is damaged: re-export it."
        )


#: element types whose raw bytes hold one plain numpy element each
_PLAIN = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL,
})


def tensor_value(tensor: onnx.TensorProto, where: str = "") -> np.ndarray:
    """The array of a stored tensor, after :func:`check_tensor`'s checks. A plain tensor's
    raw bytes are read once (protobuf copies them on every read: a ResNet-18's 45 MB of
    weights were copied twice per read, once to count them and once to convert them)."""
    plain = (
        tensor.data_type in _PLAIN and sys.byteorder == "little"
        and tensor.data_location != onnx.TensorProto.EXTERNAL and tensor.HasField("raw_data")
    )
    if not plain:
        check_tensor(tensor, where)
        return numpy_helper.to_array(tensor)
    what = f"{f'tensor {tensor.name!r}' if tensor.name else 'a constant tensor'}{where}"
    dims = list(tensor.dims)
    elements = _declared_elements(dims, what)
    raw = tensor.raw_data
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    if len(raw) != elements * dtype.itemsize:
        raise ModelLoadError(
            f"{what} declares dims {dims} ({elements:,} elements) but stores {len(raw) // dtype.itemsize:,}; "
            "the file is damaged: re-export it."
        )
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def _declared_elements(dims: list[int], what: str) -> int:
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{what} declares a negative dimension {dims}; the file is damaged.")
    elements = math.prod(dims)
    if elements > MAX_DECLARED_ELEMENTS:
        _refuse(what, elements, MAX_DECLARED_ELEMENTS)
    return elements


def _stored_elements(tensor: onnx.TensorProto) -> int | None:
    if tensor.HasField("raw_data"):
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            return None
        if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            return None  # packed two per byte
        return len(tensor.raw_data) // itemsize if itemsize else None
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        values = getattr(tensor, field)
        if len(values):
            if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
                return len(values) // 2
            if tensor.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.INT8,
                                    onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
                                    onnx.TensorProto.BOOL, onnx.TensorProto.INT32, onnx.TensorProto.FLOAT,
                                    onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE, onnx.TensorProto.UINT32,
                                    onnx.TensorProto.UINT64, onnx.TensorProto.STRING):
                return len(values)
            return None
    return 0 if not tensor.dims or 0 in tensor.dims else None


def check_constant_node(node: onnx.NodeProto, inputs: Sequence[np.ndarray | None]) -> None:
    """Refuse to evaluate ``node`` when its output would exceed :data:`MAX_COMPUTED_ELEMENTS`
    (predicted from its constant inputs: Expand, ConstantOfShape, Tile, Range, Pad, Resize...)."""
    sizes = [int(np.asarray(v).size) for v in inputs if v is not None]
    predicted = _predicted_elements(node, inputs)
    largest = max([predicted or 0, *sizes])
    if largest > MAX_COMPUTED_ELEMENTS:
        label = node.name or (node.output[0] if node.output else node.op_type)
        _refuse(f"the constant {node.op_type} node {label!r}", largest, MAX_COMPUTED_ELEMENTS)


def _ints(value: np.ndarray | None) -> list[int] | None:
    if value is None:
        return None
    array = np.asarray(value).reshape(-1)
    if array.dtype.kind not in "iuf" or not np.isfinite(array.astype(np.float64)).all():
        return None
    return [int(v) for v in array]


def _predicted_elements(node: onnx.NodeProto, inputs: Sequence[np.ndarray | None]) -> int | None:
    op = node.op_type
    first = np.asarray(inputs[0]) if inputs and inputs[0] is not None else None
    second = _ints(inputs[1]) if len(inputs) > 1 else None
    if op == "ConstantOfShape":
        shape = _ints(inputs[0]) if inputs else None
        return math.prod(max(d, 0) for d in shape) if shape is not None else None
    if op == "Expand" and first is not None and second is not None:
        rank = max(first.ndim, len(second))
        a = [1] * (rank - first.ndim) + list(first.shape)
        b = [1] * (rank - len(second)) + second
        return math.prod(max(x, y, 0) for x, y in zip(a, b, strict=True))
    if op == "Tile" and first is not None and second is not None and len(second) == first.ndim:
        return math.prod(max(d * r, 0) for d, r in zip(first.shape, second, strict=True))
    if op == "Range" and len(inputs) == 3 and all(v is not None for v in inputs):
        start, limit, delta = (float(np.asarray(v).reshape(-1)[0]) for v in inputs)
        if delta == 0 or not all(map(math.isfinite, (start, limit, delta))):
            return None
        return max(math.ceil((limit - start) / delta), 0)
    if op == "Pad" and first is not None and second is not None and len(second) == 2 * first.ndim:
        return math.prod(max(d + second[i] + second[i + first.ndim], 0) for i, d in enumerate(first.shape))
    if op in ("Resize", "Upsample") and first is not None:
        return _resized(first, inputs)
    return None


def _resized(first: np.ndarray, inputs: Sequence[np.ndarray | None]) -> int | None:
    for value in reversed(inputs[1:]):
        if value is None or np.asarray(value).size != first.ndim:
            continue
        array = np.asarray(value, dtype=np.float64).reshape(-1)
        if not np.isfinite(array).all():
            return None
        if array.max(initial=0) > 0 and np.asarray(value).dtype.kind in "iu":
            return math.prod(int(v) for v in array)  # sizes
        return math.prod(max(math.floor(d * s), 0) for d, s in zip(first.shape, array, strict=True))  # scales
    return None
