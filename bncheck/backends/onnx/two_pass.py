"""The *two-pass* moments of a BN input, for every input the one-pass form does not take
(rank 2 or unknown, half precision, a running mean computed at run time)::

    m_nc = GlobalAveragePool(X)                  # per-sample means, (N, C, 1, ...)
    m    = ReduceMean(m_nc, axes=[0])            # channel mean of the batch, (1, C, 1, ...)
    q_nc = GlobalAveragePool((X - m) * (X - m))  # mean squared deviation per sample
    r_nc = GlobalAveragePool(X - m)              # mean deviation per sample

with, in float64, ``mean_c = m + r`` and ``m2_c = n / (N C) * sum_n q_nc - count * r**2``
(``r`` the batch's mean of ``r_nc``: the corrected two-pass algorithm of Chan, Golub and
LeVeque): every element is centred at the batch's channel mean before squaring, so the
variance is exact to float32 rounding whatever the mean/std ratio, and ``r`` takes the float32
rounding error of ``m`` out of the mean. Without it that error, about ``1e3 * 2**-24`` stds at
mean/std = 1e3, entered the merge of two batches' moments linearly: 8e-6 relative variance
error over 16 batches of 64, where the requirement is 1e-6. Inputs of rank 2 or unknown rank are
reshaped to (N, C, L) and reduced over (N, L) with ReduceMean the same way. float16/bfloat16
inputs are cast to float32 first. Only (N, C) values leave the runtime.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bncheck.backends.onnx.bn_nodes import BnGraph
from bncheck.backends.onnx.ops import as_float, reduce_mean
from bncheck.backends.onnx.row_pool import mean_nodes
from bncheck.numerics.moments import Moments


def two_pass_nodes(graph: BnGraph, node: onnx.NodeProto, prefix: str, inits: list, *, sized: bool, block: int | None = None):
    """Per-sample means, their batch mean, and the per-sample mean squared deviations and mean
    deviations from it; ``sized`` adds a ``Size(X)`` output; ``block``: average blocks of the last axis first
    (:mod:`.row_pool`, large maps). Returns (nodes, [(output, element type)])."""
    x = node.input[0]
    elem, rank = graph.value_type(x)
    nodes, xf, out_type = as_float(x, elem, prefix)
    mean, sq, dev = prefix + "mean_c", prefix + "msd_nc", prefix + "mdev_nc"
    if rank is not None and rank >= 3:
        # per-sample means (cheap, NCHWc), their mean over the batch, then every element
        # centred at that channel mean; squares averaged per sample and channel
        nodes += mean_nodes(xf, prefix + "mean_nc", rank, block)
        nodes += reduce_mean(graph.opset, prefix + "mean_nc", mean, (0,), inits)
        centred = xf
    else:
        centred = prefix + "x3"
        inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), prefix + "shape3"))
        nodes.append(helper.make_node("Reshape", [xf, prefix + "shape3"], [centred]))
        nodes += reduce_mean(graph.opset, centred, mean, (0, 2), inits)
    nodes += [
        helper.make_node("Sub", [centred, mean], [prefix + "dev"]),
        helper.make_node("Mul", [prefix + "dev", prefix + "dev"], [prefix + "dev2"]),
    ]
    if rank is not None and rank >= 3:
        nodes += mean_nodes(prefix + "dev2", sq, rank, block)
        nodes += mean_nodes(prefix + "dev", dev, rank, block)
    else:
        nodes += reduce_mean(graph.opset, prefix + "dev2", sq, (0, 2), inits)
        nodes += reduce_mean(graph.opset, prefix + "dev", dev, (0, 2), inits)
    outputs = [(mean, out_type), (sq, out_type), (dev, out_type)]
    if sized:
        nodes.append(helper.make_node("Size", [xf], [prefix + "size"]))
        outputs.append((prefix + "size", TensorProto.INT64))
    return nodes, outputs


def moments_from_outputs(mean, msd, mdev, size: int) -> Moments:
    """Moments from the stats outputs: the channel mean ``m`` ``(1, C, 1...)``, the mean
    squared deviation and the mean deviation from it per group ``(G, C, 1...)`` (G = samples,
    or 1), and ``size`` = the number of elements of the BN input:
    ``mean = m + r``, ``m2 = (size / (G C)) * sum_g msd_g - count * r**2``, ``r = mean_g mdev_g``."""
    mean = np.asarray(mean, np.float64).reshape(-1)
    msd = np.asarray(msd, np.float64)
    groups = msd.shape[0]
    if size == 0:
        return Moments.empty(mean.size)
    per_group = size // (groups * mean.size)
    count = size // mean.size
    r = np.asarray(mdev, np.float64).reshape(groups, -1).mean(axis=0)
    m2 = per_group * msd.reshape(groups, -1).sum(axis=0) - count * r * r
    return Moments.from_batch(count, mean + r, np.maximum(m2, 0.0))
