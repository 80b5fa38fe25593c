"""Accurate per-sample means of a large feature map inside onnxruntime.

``GlobalAveragePool`` accumulates in float32 along the whole map: its relative error grows
with the number of elements (2e-7 at 64², 1.9e-6 at 256², 6e-5 at 1024² measured against
float64). For a map of more than :data:`BLOCKED_ABOVE` elements per channel the runner's
moments graph first averages blocks of ``k`` consecutive elements of the last axis
(``AveragePool`` with kernel and stride ``(1, ..., 1, k)``, ``k`` a divisor of the last axis
near the square root of the map size), then the blocks' means with ``GlobalAveragePool``:
the mean of equal-sized block means is the mean, and each float32 sum now runs over about
sqrt(map) terms (3e-8 relative at 1024²). Both ops stay in onnxruntime's NCHWc layout. The
block size depends on the map's shape, so the runner rebuilds the graph when a batch of a
new sample shape changes it.
"""

from __future__ import annotations

import math

from onnx import helper

#: feature maps with more elements per channel than this are averaged in blocks
BLOCKED_ABOVE = 4096


def block_size(shape: tuple[int | None, ...] | None) -> int | None:
    """``k`` for a BN input of ``shape`` (N, C, spatial...), or None when the map is small,
    its shape unknown, or its last axis has no divisor above 1 near sqrt(map)."""
    if shape is None or len(shape) < 3 or any(d is None for d in shape[2:]):
        return None
    spatial = math.prod(int(d) for d in shape[2:])
    if spatial <= BLOCKED_ABOVE:
        return None
    last = int(shape[-1])
    target = math.isqrt(spatial)
    small = [d for d in range(1, math.isqrt(last) + 1) if last % d == 0]
    divisors = sorted({*small, *(last // d for d in small)} - {1})
    if not divisors:
        return None
    return min(divisors, key=lambda d: (abs(math.log(d / target)), d))


def mean_nodes(value: str, out: str, rank: int, block: int | None) -> list:
    """``out`` = per-sample, per-channel mean of ``value`` (N, C, 1, ...): GlobalAveragePool,
    after an AveragePool over blocks of ``block`` elements of the last axis when given."""
    if block is None:
        return [helper.make_node("GlobalAveragePool", [value], [out])]
    ones = [1] * (rank - 3)
    pooled = out + "/blocks"
    return [
        helper.make_node("AveragePool", [value], [pooled], kernel_shape=[*ones, block], strides=[*ones, block]),
        helper.make_node("GlobalAveragePool", [pooled], [out]),
    ]
