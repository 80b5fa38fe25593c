"""The *one-pass* moments of a BN input: for float32 inputs of known rank >= 3 (``N, C,
spatial...``) whose running mean is a constant, one pass over a *shifted* input::

    D    = X + (-s)                     # onnxruntime folds this Add into the producing Conv's bias
    Y    = BatchNormalization(D, mean = running_mean - s)   # the model's node, same output
    m_nc = GlobalAveragePool(D)         # per-sample means of D, (N, C, 1, ...)
    q_nc = GlobalAveragePool(D * D)     # per-sample mean squares of D

and, in float64, ``mean = s + mean_n m_nc``, ``m2 = n / C * (mean_n q_nc - (mean_n m_nc)**2)``.
The shift ``s`` starts at the running mean and every batch is checked: the float32 rounding
error of the one-pass form is that of a centred sum times ``A = E[D**2] / var``, so when a
channel has ``A`` above :data:`SHIFT_TOLERANCE` (its data mean is more than one standard
deviation from ``s``) the graph is rebuilt with ``s`` = the measured data mean and the batch is
run again; after :data:`MAX_RECENTRES` such re-centrings the runner switches for good to the
two-pass form (:mod:`bncheck.backends.onnx.two_pass`). All the added ops run in onnxruntime's
blocked NCHWc layout next to the convolutions, and no elementwise ``Sub`` pass is needed: on a
ResNet-18 this costs about half of what the two-pass form costs. Channels whose spread is below
~16 float32 ulps of their magnitude (constant channels) are left out of the check: no float32
computation resolves their variance better. Stems pool first (:mod:`.pool_first`).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bncheck.backends.onnx.bn_nodes import BnGraph
from bncheck.backends.onnx.pool_first import PoolFirst
from bncheck.backends.onnx.row_pool import mean_nodes
from bncheck.numerics.moments import Moments

#: the one-pass moments may carry up to this many times the float32 error of a centred sum;
#: beyond it (a channel's data mean more than one std away from the shift) the shift moves
SHIFT_TOLERANCE = 2.0
#: re-centrings of the one-pass graph before the runner settles on the two-pass form for good
MAX_RECENTRES = 4
#: a channel whose std is below this fraction of its magnitude (about 16 float32 ulps) is
#: constant as far as float32 can tell, and is left out of the re-centring check
CONSTANT_SPREAD = 2.0**-20


def one_pass_nodes(
    graph: BnGraph,
    node: onnx.NodeProto,
    shift: np.ndarray,
    running_mean: np.ndarray,
    prefix: str,
    inits: list,
    *,
    sized: bool,
    pool: PoolFirst | None = None,
    block: int | None = None,
):
    """``D = X - s`` (an Add onnxruntime folds into a producing Conv), the BN node reading D
    with its mean moved by ``s``, and the per-sample means of D and D*D; with ``pool``, D is
    ``sign * (X - s)`` per channel and the MaxPool runs on D before the BN [and Relu].
    ``block``: average blocks of the last axis first (:mod:`.row_pool`, large maps).
    Returns (nodes replacing the BN [and its Relu, MaxPool], stats nodes, [(output, type)])."""
    x = node.input[0]
    rank = graph.value_type(x)[1]
    channel_shape = (-1,) + (1,) * (rank - 2)
    inits.append(numpy_helper.from_array((-shift).reshape(channel_shape), prefix + "neg_shift"))
    signs = pool.signs if pool is not None else np.ones_like(shift)
    moved = signs * (running_mean - shift.astype(np.float64))
    inits.append(numpy_helper.from_array(moved.astype(np.float32), prefix + "mean_shifted"))
    d = prefix + "d"
    bn = copy.deepcopy(node)
    bn.input[3] = prefix + "mean_shifted"
    flipped = bool(np.any(signs < 0))
    centred = prefix + "centred" if flipped else d
    shifted = [helper.make_node("Add", [x, prefix + "neg_shift"], [centred])]
    if flipped:  # folded into the Conv's weights and bias by onnxruntime, like the Add
        inits.append(numpy_helper.from_array(signs.reshape(channel_shape), prefix + "signs"))
        shifted.append(helper.make_node("Mul", [centred, prefix + "signs"], [d]))
        inits.append(numpy_helper.from_array(pool.signed_scale, prefix + "scale_signed"))
        bn.input[1] = prefix + "scale_signed"
    if pool is None:
        bn.input[0] = d
        shifted.append(bn)
    else:
        shifted += _pooled_first(graph, pool, bn, d, prefix)
    stats = [
        *mean_nodes(d, prefix + "mean_nc", rank, block),
        helper.make_node("Mul", [d, d], [prefix + "d2"]),
        *mean_nodes(prefix + "d2", prefix + "msq_nc", rank, block),
    ]
    outputs = [(prefix + "mean_nc", TensorProto.FLOAT), (prefix + "msq_nc", TensorProto.FLOAT)]
    if sized:
        stats.append(helper.make_node("Size", [d], [prefix + "size"]))
        outputs.append((prefix + "size", TensorProto.INT64))
    return shifted, stats, outputs


def _pooled_first(graph: BnGraph, pool: PoolFirst, bn: onnx.NodeProto, d: str, prefix: str) -> list:
    """MaxPool on ``d``, then ``bn`` [and the Relu], ending in the MaxPool's output name."""
    *relu, maxpool = [graph.model.graph.node[i] for i in pool.replaced]
    pooled = copy.deepcopy(maxpool)
    pooled.input[0], pooled.output[0] = d, prefix + "pooled"
    bn.input[0] = prefix + "pooled"
    nodes = [pooled, bn]
    if relu:
        bn.output[0] = prefix + "pooled_y"
        activation = copy.deepcopy(relu[0])
        activation.input[0], activation.output[0] = prefix + "pooled_y", maxpool.output[0]
        nodes.append(activation)
    else:
        bn.output[0] = maxpool.output[0]
    return nodes


def one_pass_statistics(
    m: np.ndarray, q: np.ndarray, shift: np.ndarray, signs: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and population variance of ``X`` per channel from the batch means ``m`` of
    ``D = signs * (X - shift)`` and ``q`` of ``D**2`` (float64), and whether each channel is
    off-centre: ``E[D**2] > tolerance * var`` (the float32 error of ``E[D**2] - E[D]**2`` is
    ``E[D**2] / var`` times that of a centred sum), where channels constant to float32 precision
    count as centred and values that are not finite never are off-centre."""
    var = np.maximum(q - m * m, 0.0)
    mean = shift + (m if signs is None else signs * m)  # float64: float32 values promote exactly
    floor = np.square(CONSTANT_SPREAD * np.maximum(np.abs(mean), np.abs(shift)))
    with np.errstate(invalid="ignore"):
        off = np.isfinite(q) & (q > SHIFT_TOLERANCE * np.maximum(var, floor))
    return mean, var, off


def shifted_moments(
    mean_nc, msq_nc, size: int, shift: np.ndarray, signs: np.ndarray | None = None
) -> tuple[Moments, bool]:
    """Moments of ``X`` from one layer's one-pass outputs: per-sample means and mean squares of
    ``D = signs * (X - shift)`` ``(N, C, 1...)`` and ``size`` = the number of elements of X;
    and whether some channel is off-centre (see :func:`one_pass_statistics`)."""
    channels = shift.size
    groups = mean_nc.shape[0] if mean_nc.ndim else 0
    if size == 0 or groups == 0:
        return Moments.empty(channels), False
    m = mean_nc.reshape(groups, channels).mean(axis=0, dtype=np.float64)
    q = msq_nc.reshape(groups, channels).mean(axis=0, dtype=np.float64)
    mean, var, off = one_pass_statistics(m, q, shift.astype(np.float64), signs)
    count = size // channels
    return Moments(count, mean, var * count), bool(off.any())
