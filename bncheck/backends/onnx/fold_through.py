"""The look-through patterns: a BN behind per-channel constant ``Add``/``Mul`` nodes
(:mod:`bncheck.backends.onnx.through`) folds into the Conv/ConvTranspose/Gemm behind them, and
those nodes go. Registered for ``Add`` and ``Mul`` producers in the pattern registry, which this
module hands out complete as :data:`PATTERNS` (an ``Add`` over a MatMul stays the Linear pattern).
"""

from __future__ import annotations

import numpy as np

from bncheck.backends.onnx.fold_edits import CannotFold, GraphEdits, Rewrite
from bncheck.backends.onnx.fold_patterns import PATTERNS, fold_matmul_add, pattern
from bncheck.backends.onnx.source import OnnxSource
from bncheck.backends.onnx.through import chain_through, channel_vector

__all__ = ["PATTERNS", "fold_through"]


@pattern("Add", "Mul")
def fold_through(edits: GraphEdits, prod, x: str, y: str, s, t, rewrite: Rewrite) -> str:
    """``BN(q + c) = s*q + (t + s*c)``, ``BN(q * m) = (s*m)*q + t``, nearest the BN first; then
    the producer's own pattern with the combined scale and shift."""
    if prod.op_type == "Add" and OnnxSource.matmul_under_add(prod, edits.index) is not None:
        return fold_matmul_add(edits, prod, x, y, s, t, rewrite)
    chain = chain_through(prod, edits.index)
    if chain is None:
        raise CannotFold(f"fed by {prod.op_type} {prod.name or prod.output[0]}, which is not a per-channel constant over a conv/gemm")
    s, t = np.asarray(s, dtype=np.float64).copy(), np.asarray(t, dtype=np.float64).copy()
    rank = _rank(chain.producer, edits)
    for step in chain.steps:
        vector = channel_vector(step.const, rank, s.size)
        if vector is None:
            raise CannotFold(f"the constant of {step.node.name or step.op} is not per-channel")
        if step.op == "Add":
            t = t + s * vector
        else:
            s = s * vector
        rewrite.removed.append(step.node)
        rewrite.released.append(step.name)
    inner = chain.producer
    into = PATTERNS[inner.op_type](edits, inner, inner.output[0], y, s, t, rewrite)
    return f"{into}+" + "+".join(st.node.name or st.node.output[0] for st in reversed(chain.steps))


def _rank(prod, edits: GraphEdits) -> int:
    return 2 if prod.op_type == "Gemm" else int(np.asarray(edits.param(prod, 1)).ndim)
