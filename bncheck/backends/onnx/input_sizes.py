"""Concrete sizes for the dynamic axes of an ONNX model's inputs, so that a model exported with
``(?, 3, ?, ?)`` can be run (to verify a fold) without the user naming a shape.

Exported models rarely say which sizes they accept, but their graph hints at it. The search
tries a short list of candidates, in this order, and keeps the first that onnxruntime runs:

1. sizes named in the model's metadata (``metadata_props`` keys such as ``input_shape``,
   ``image_size``, ``height``/``width``);
2. the model's *total stride* per spatial axis: the product of Conv/pool strides (divided by
   ConvTranspose strides and constant Resize/Upsample scales) along the deepest path, read from
   the graph without running anything. Feature-pyramid models (a detector that adds an
   upsampled map to a finer one) only accept multiples of it, and a side of twice the stride
   keeps every feature map at least 2 pixels wide, so the candidate sides are multiples of
   the stride from ``max(32, 2 * stride)`` on;
3. a Flatten feeding a Gemm/MatMul fixes the size: its weight takes K = C * h * w features,
   with C from the Conv upstream and the stride at the Flatten, which gives a square side;
4. the usual image sides (224, 256, 320, 384, 512, 640).

Every candidate is checked by running the model once on zeros with a batch of 1. The batch
axis is left to the caller. The folded model keeps its dynamic axes: only the verification
inputs are concrete.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from bncheck.backends.interface import InputSpec
from bncheck.backends.onnx.graph import GraphIndex, model_opset
from bncheck.errors import UsageError, first_line

#: the most candidates tried before giving up
MAX_TRIES = 8
#: the smallest side tried for a spatial axis
MIN_SIDE = 32
#: sides tried after the stride-derived ones
USUAL_SIDES = (224, 256, 320, 384, 512, 640)
#: a stride is capped here (a graph whose strides multiply past it is read as this)
MAX_STRIDE = 256
#: the size tried for a dynamic axis that is not spatial (features, tokens)
NON_SPATIAL = 16

_DOWN_OPS = ("Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool")
_SIZE_KEYS = re.compile(r"shape|size|height|width|resolution|dims", re.IGNORECASE)


class NoInputSize(UsageError):
    """No candidate size runs; ``detail`` says which were tried and what onnxruntime said."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail}; pass --input-shape with a size it accepts (e.g. 1,3,224,224) or --verify DATA.")
        self.detail = detail


@dataclass(frozen=True)
class Resolved:
    """Concrete input specs and one sentence saying how their sizes were found."""

    specs: list[InputSpec]
    how: str


def resolve(model: onnx.ModelProto, specs: list[InputSpec], accepts: Callable[[tuple[np.ndarray, ...]], str | None]) -> Resolved:
    """``specs`` with every dynamic non-batch dimension made concrete; ``accepts(batch)``
    runs the model and returns None when it ran, else onnxruntime's complaint."""
    dynamic = [s for s in specs if s.shape is not None and any(d is None for d in s.shape)]
    if not dynamic:
        return Resolved(specs, "")
    index = GraphIndex(model.graph, model_opset(model))  # one walk of the graph for every hint
    facts = _strides_and_channels(model, index)
    strides = total_strides(model, facts)
    hints = [("the model metadata", h) for h in metadata_sizes(model)]
    hints += [("the features a Flatten -> Gemm takes", h) for h in flatten_sizes(model, facts, index)]
    specs = [_with_channels(s, first_layer_width(model, s.name, index)) for s in specs]
    last_error = ""
    tried = []
    for origin, candidate in _candidates(specs, strides, hints):
        concrete = [_with_sizes(s, candidate.get(s.name)) for s in specs]
        tried.append(_shapes_text(concrete))
        error = accepts(tuple(_zeros(s) for s in concrete))
        if error is None:
            names = {s.name for s in dynamic}
            shown = "; ".join(f"{s.name} {_dims_text(s)}" for s in concrete if s.name in names)
            return Resolved(concrete, f"dynamic input axes sized from {origin}: {shown} (onnxruntime runs it)")
        last_error = error
        if len(tried) >= MAX_TRIES:
            break
    raise NoInputSize(f"no input size bncheck tried runs the model (tried {', '.join(tried)}; onnxruntime: {last_error})")


def _candidates(specs, strides: list[int], hints: list[tuple[str, tuple[int, ...]]]):
    """(origin, {input name: per-sample dims}) to try, best first, without repeats."""
    seen: set[tuple] = set()

    def emit(origin: str, side_for: Callable[[InputSpec, int, int], int]):
        sizes = {}
        for spec in specs:
            if spec.shape is None or all(d is not None for d in spec.shape):
                continue
            sizes[spec.name] = tuple(d if d is not None else side_for(spec, i, len(spec.shape)) for i, d in enumerate(spec.shape))
        key = tuple(sorted(sizes.items()))
        if key not in seen:
            seen.add(key)
            return [(origin, sizes)]
        return []

    out = []
    for origin, hint in hints:
        out += emit(origin, lambda spec, i, rank, h=hint: _from_hint(h, spec, i, rank))
    for k in range(len(_STRIDE_SIDES)):
        out += emit(
            f"the graph's total stride {'x'.join(map(str, strides))}",
            lambda spec, i, rank, k=k: _stride_side(strides, i, rank, k),
        )
    for side in USUAL_SIDES:
        out += emit("the usual image sizes", lambda spec, i, rank, side=side: side if _spatial(i, rank) else NON_SPATIAL)
    return out


def _spatial(i: int, rank: int) -> bool:
    """Per-sample axis ``i`` of a sample of ``rank`` axes is spatial (after the channel axis)."""
    return rank >= 2 and i >= 1


#: candidate ``k`` per axis: (multiple of the base side, at least twice the stride?)
_STRIDE_SIDES = ((1, True), (1, False), (2, True), (4, True))


def _stride_side(strides: list[int], i: int, rank: int, k: int) -> int:
    """Candidate ``k`` for a spatial axis: a multiple of its stride of at least
    :data:`MIN_SIDE` (and, first, of twice the stride, so the deepest map is 2 wide; models
    whose deepest map must be 1 wide, like text recognisers, take the second)."""
    if not _spatial(i, rank):
        return NON_SPATIAL
    axis = i - 1
    stride = strides[axis] if axis < len(strides) else (strides[-1] if strides else 1)
    times, doubled = _STRIDE_SIDES[k]
    least = max(MIN_SIDE, 2 * stride) if doubled else MIN_SIDE
    return stride * max(1, math.ceil(least / stride)) * times


def _from_hint(hint: tuple[int, ...], spec: InputSpec, i: int, rank: int) -> int:
    """The hint's value for axis ``i``: a full (N, C, H, W) or per-sample shape, (H, W), or one side."""
    for shape in (hint[1:], hint):
        if len(shape) == rank and shape[i] > 0:
            return int(shape[i])
    spatial = hint[-(rank - 1):] if rank >= 2 and len(hint) >= rank - 1 else ()
    if _spatial(i, rank) and len(spatial) == rank - 1 and spatial[i - 1] > 0:
        return int(spatial[i - 1])
    if len(hint) == 1 and _spatial(i, rank):
        return int(hint[0])
    return NON_SPATIAL


def first_layer_width(model: onnx.ModelProto, name: str, index: GraphIndex | None = None) -> int | None:
    """The channels (features) that the first Conv/ConvTranspose/Gemm/MatMul reading input
    ``name`` directly takes, from its constant weight; None when no such layer says."""
    index = index or GraphIndex(model.graph, model_opset(model))
    for node in index.consumers.get(name, []):
        if len(node.input) < 2 or node.input[0] != name:
            continue
        try:
            shape = index.constant_shape(node.input[1])
        except Exception:  # a hostile constant is refused by the fold itself, not here
            return None
        if shape is None or len(shape) < 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            return int(shape[1]) * int(attrs.get("group", 1))
        if node.op_type == "ConvTranspose":
            return int(shape[0])
        if node.op_type == "Gemm":
            return int(shape[1] if attrs.get("transB", 0) else shape[0])
        if node.op_type == "MatMul":
            return int(shape[-2])
    return None


def _with_channels(spec: InputSpec, width: int | None) -> InputSpec:
    """``spec`` with a dynamic channel (feature) axis set to ``width``."""
    if width is None or not spec.shape or spec.shape[0] is not None:
        return spec
    return InputSpec(spec.name, (width, *spec.shape[1:]), spec.dtype, batch=spec.batch, batched=spec.batched)


def metadata_sizes(model: onnx.ModelProto) -> list[tuple[int, ...]]:
    """Integer tuples found under size-like keys of ``metadata_props`` (small values only)."""
    found = []
    for prop in model.metadata_props:
        if not _SIZE_KEYS.search(prop.key) or len(prop.value) > 200:
            continue
        values = tuple(int(v) for v in re.findall(r"-?\d+", prop.value))
        if values and all(0 < v <= 8192 for v in values) and len(values) <= 5:
            found.append(values)
    return found


def total_strides(model: onnx.ModelProto, facts=None) -> list[int]:
    """The largest down-sampling factor per spatial axis over the main graph's values (at least
    1); ``facts``: :func:`_strides_and_channels` of ``model`` when already known."""
    factor, _ = facts or _strides_and_channels(model)
    best: list[float] = []
    for here in factor.values():
        best = [max(b, h) for b, h in zip(_pad(best, len(here)), _pad(here, len(best)), strict=True)]
    return [int(min(MAX_STRIDE, max(1, round(b)))) for b in best] or [1]


def _strides_and_channels(model: onnx.ModelProto, index: GraphIndex | None = None) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Per value of the main graph: its down-sampling factor per spatial axis, and its channel
    count where a Conv/ConvTranspose upstream fixes it (kept through ops that keep channels)."""
    index = index or GraphIndex(model.graph, model_opset(model))
    factor: dict[str, list[float]] = {}
    channels: dict[str, int] = {}
    for node in model.graph.node:  # ONNX stores nodes in topological order
        ins = [factor[i] for i in node.input if i in factor]
        here = [max(col) for col in _columns(ins)] if ins else []
        step = _node_step(node, index)
        if step is None:  # the spatial axes are gone (global pooling, flatten)
            continue
        if step:
            here = [h * s for h, s in zip(_pad(here, len(step)), step, strict=True)]
        width = _out_channels(node, index) or next((channels[i] for i in node.input if i in channels), None)
        for out in node.output:
            factor[out] = here
            if width:
                channels[out] = width
    return factor, channels


def _out_channels(node: onnx.NodeProto, index: GraphIndex) -> int | None:
    if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
        return None
    shape = index.constant_shape(node.input[1])
    if shape is None:
        return None
    group = next((int(a.i) for a in node.attribute if a.name == "group"), 1)
    return int(shape[0]) if node.op_type == "Conv" else int(shape[1]) * group


def flatten_sizes(model: onnx.ModelProto, facts=None, index: GraphIndex | None = None) -> list[tuple[int, int]]:
    """Square (H, W) input sizes implied by a Flatten feeding a Gemm/MatMul: its weight takes
    K = C * h * w features, C and the stride at the Flatten come from the graph."""
    index = index or GraphIndex(model.graph, model_opset(model))
    factor, channels = facts or _strides_and_channels(model, index)
    found = []
    for node in model.graph.node:
        if node.op_type != "Flatten" or node.input[0] not in channels:
            continue
        stride = factor.get(node.input[0], [])
        for user in index.consumers.get(node.output[0], []):
            k = _in_features(user, index)
            c = channels[node.input[0]]
            if not k or k % c or len(stride) != 2 or stride[0] != stride[1]:
                continue
            side = math.isqrt(k // c)
            if side * side == k // c:
                found.append((round(side * stride[0]),) * 2)
    return found


def _in_features(node: onnx.NodeProto, index: GraphIndex) -> int | None:
    if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2:
        return None
    shape = index.constant_shape(node.input[1])
    if shape is None or len(shape) != 2:
        return None
    trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return int(shape[1] if trans_b else shape[0])


def _pad(values: list[float], n: int) -> list[float]:
    return list(values) + [1.0] * (n - len(values))


def _columns(rows: list[list[float]]) -> list[list[float]]:
    n = max(len(r) for r in rows)
    return [[(r[i] if i < len(r) else 1.0) for r in rows] for i in range(n)]


def _node_step(node: onnx.NodeProto, index: GraphIndex) -> list[float] | None:
    """The factor ``node`` multiplies the stride by per spatial axis ([] for none, None when it
    removes the spatial axes)."""
    op = node.op_type
    if op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Flatten"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op in _DOWN_OPS:
        return [float(s) for s in attrs.get("strides", [])]
    if op == "ConvTranspose":
        return [1.0 / max(int(s), 1) for s in attrs.get("strides", [])]
    if op in ("Resize", "Upsample"):
        scales = _resize_scales(node, index)
        return [1.0 / s for s in scales[2:]] if scales is not None else []
    return []


def _resize_scales(node: onnx.NodeProto, index: GraphIndex) -> list[float] | None:
    position = 1 if node.op_type == "Upsample" or index.opset < 11 else 2
    if len(node.input) <= position or not node.input[position]:
        return None
    try:
        value = index.constant(node.input[position])
    except Exception:  # a hostile constant is refused by the fold itself, not here
        return None
    if value is None or np.asarray(value).size < 3:
        return None
    scales = [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]
    return scales if all(s > 0 and math.isfinite(s) for s in scales) else None


def _with_sizes(spec: InputSpec, dims: tuple[int, ...] | None) -> InputSpec:
    if dims is None:
        return spec
    return InputSpec(spec.name, tuple(int(d) for d in dims), spec.dtype, batch=spec.batch, batched=spec.batched)


def _zeros(spec: InputSpec) -> np.ndarray:
    full = [1 if d is None else int(d) for d in (spec.full_shape() or ())]
    return np.zeros(full, dtype=np.dtype(spec.dtype))


def _dims_text(spec: InputSpec) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in (spec.full_shape() or ())) + ")"


def _shapes_text(specs: list[InputSpec]) -> str:
    return " + ".join(_dims_text(s) for s in specs)


def run_error(run: Callable[[tuple[np.ndarray, ...]], object]) -> Callable[[tuple[np.ndarray, ...]], str | None]:
    """``accepts`` for :func:`resolve` from an executable: None when it runs, else its error."""

    def accepts(batch: tuple[np.ndarray, ...]) -> str | None:
        try:
            run(batch)
        except Exception as exc:  # onnxruntime raises its own exception types
            return first_line(exc)
        return None

    return accepts
