"""Per-channel constant ``Add`` / ``Mul`` nodes between a Conv / ConvTranspose / Gemm and its
BatchNormalization, looked through so that the BN still folds.

Paddle2ONNX writes a ConvTranspose's bias as ``ConvTranspose -> Add(constant (1, C, 1, 1))``,
and other converters put a per-channel ``Mul`` scale there. Both are affine per channel, so the
BN absorbs them exactly: ``BN(q + c) = s*q + (t + s*c)`` and ``BN(q * m) = (s*m)*q + t``; the
producer then takes the combined scale and shift. A constant qualifies when it broadcasts to
the producer's output without changing its shape and varies along the channel axis (axis 1
for Conv, ConvTranspose and Gemm outputs) only. Only the graph is read here; the rewrite is
:mod:`bncheck.backends.onnx.fold_through`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from bncheck.backends.onnx.graph import GraphIndex

#: ops that are looked through when one input is a per-channel constant
THROUGH_OPS = ("Add", "Mul")
#: producers a look-through chain may end at
CHAIN_PRODUCERS = ("Conv", "ConvTranspose", "Gemm")
#: the most Add/Mul nodes looked through in a row
MAX_STEPS = 4


@dataclass(frozen=True)
class Step:
    """One looked-through node: ``op`` with the constant input ``const`` (its name ``name``)."""

    node: onnx.NodeProto
    op: str
    const: np.ndarray
    name: str
    #: the node's other input (the producer side)
    source: str


@dataclass(frozen=True)
class Chain:
    """``producer -> steps[-1] -> ... -> steps[0] -> BN``."""

    producer: onnx.NodeProto
    steps: tuple[Step, ...]

    def label(self) -> str:
        names = [self.producer.name or self.producer.output[0], *(s.node.name or s.node.output[0] for s in reversed(self.steps))]
        return "+".join(names)


def chain_through(node: onnx.NodeProto, index: GraphIndex) -> Chain | None:
    """The Conv/ConvTranspose/Gemm behind ``node`` (an Add/Mul feeding a BN) and the steps,
    nearest the BN first; None when ``node`` is not such a chain (a MatMul+Add Linear is not)."""
    steps: list[Step] = []
    current = node
    while current is not None and current.op_type in THROUGH_OPS and len(steps) < MAX_STEPS:
        step = _step(current, index)
        if step is None:
            return None
        steps.append(step)
        inner = index.producer.get(step.source)
        if inner is None:
            return None
        if inner.op_type == "MatMul":
            return None  # MatMul + Add is a Linear: the MatMul+Add pattern folds it
        if inner.op_type in CHAIN_PRODUCERS:
            if not _private(step.source, index):
                return None
            return Chain(inner, tuple(steps)) if _per_channel(Chain(inner, tuple(steps)), index) else None
        if not _private(step.source, index):
            return None
        current = inner
    return None


def _step(node: onnx.NodeProto, index: GraphIndex) -> Step | None:
    if node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return None
    for i in (1, 0):
        const_name, other = node.input[i], node.input[1 - i]
        if other in index.producer and not index.is_constant(other):
            value = index.constant(const_name)
            if value is not None and np.issubdtype(np.asarray(value).dtype, np.floating):
                return Step(node, node.op_type, np.asarray(value), const_name, other)
    return None


def _private(name: str, index: GraphIndex) -> bool:
    """``name`` is read by one node only and is no graph output."""
    return len(index.consumers.get(name, [])) == 1 and name not in index.graph_outputs


def _per_channel(chain: Chain, index: GraphIndex) -> bool:
    rank, channels = _output_rank_and_channels(chain.producer, index)
    if rank is None or channels is None:
        return False
    return all(channel_vector(step.const, rank, channels) is not None for step in chain.steps)


def _output_rank_and_channels(prod: onnx.NodeProto, index: GraphIndex) -> tuple[int | None, int | None]:
    if len(prod.input) < 2:
        return None, None
    weight = index.constant(prod.input[1])
    if weight is None:
        return None, None
    weight = np.asarray(weight)
    if prod.op_type == "Gemm":
        trans_b = any(a.name == "transB" and a.i for a in prod.attribute)
        return 2, int(weight.shape[0] if trans_b else weight.shape[1])
    if prod.op_type == "ConvTranspose":
        group = next((int(a.i) for a in prod.attribute if a.name == "group"), 1)
        return weight.ndim, int(weight.shape[1]) * group
    return weight.ndim, int(weight.shape[0])


def channel_vector(value: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """``value`` as a float64 vector of ``channels`` entries when, broadcast against an output
    of ``rank`` axes with the channels on axis 1, it keeps that output's shape and varies along
    the channel axis only; else None."""
    value = np.asarray(value, dtype=np.float64)
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).copy() if value.size else None
