"""The moments of a BN input ``x`` (N, C, ...) computed by torch ops: each row ``x[n, c]`` (its
L elements) two-pass about its own mean, in chunks of rows small enough to stay in the CPU's
cache, and the rows merged in float64 (Chan)::

    for rows in chunks of t = x.reshape(N * C, L):   # about CHUNK elements each
        m_r  = rows.mean(1)                          # read from memory: the chunk is now cached
        d    = rows - m_r                            # into one reused scratch buffer, in cache
        s_r  = sum(d, dim=1);  q_r = norm(d, dim=1) ** 2
        m_r += s_r / L;        q_r -= s_r ** 2 / L   # m_r's float32 rounding undone
    mean = mean_n m_nc;  m2 = sum_n q_nc + L * sum_n (m_nc - mean) ** 2      (float64)

Rows of more than ``BLOCKED_ABOVE`` elements are normed in blocks of about sqrt(L), the
blocks' squares summed in float64 (one float32 norm over a 1024x1024 map is 2e-5 relative
off, the blocked one 3e-8). Centring each element at its own row's mean keeps the variance
exact to float32 rounding at any mean/std ratio (the rounding of ``m_r`` enters squared only),
and the per-sample moments (N, C) come from the same reductions. Against centring the whole
input at the batch mean (three passes over memory and a freshly allocated copy of ``x``), a
ResNet-18 batch's 20 BN inputs take 36 instead of 72 ms on 2 cores (``bench/engines.py``).
Only (N, C) and (C,) vectors leave torch.
"""

from __future__ import annotations

import math
import threading

import torch

#: elements per chunk of groups: 2 MB of float32, within a core's share of L2
CHUNK = 2**19
#: rows with more elements than this are normed in blocks
BLOCKED_ABOVE = 4096
#: channels-last maps are reduced in pieces of at most this many positions (per channel)
PIECE = 256

_SCRATCH = threading.local()


def channel_moments(x, per_sample: bool = False) -> tuple:
    """``(count, mean, m2)`` of a BN input over every axis but 1 (the channel axis), float64
    (C,) tensors; ``per_sample``: also each sample's channel means and sums of squared
    deviations from them, float64 (N, C). Channels-last inputs are read where they lie."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    x = x.detach()
    n, c = x.shape[0], x.shape[1]
    with torch.no_grad():
        pieces = _pieces(x)
        if pieces is None:  # rows (n, c) of the contiguous input
            t = x.contiguous().reshape(n * c, -1, 1)
            length = t.shape[1]
            means, squares = (v.view(n, c) for v in _group_moments(t))
        else:  # pieces of positions of a channels-last map, merged per sample
            length = x.numel() // (n * c)
            size = length // pieces
            t = x.permute(0, 2, 3, 1).reshape(n * pieces, size, c)
            piece_means, piece_squares = (v.view(n, pieces, c) for v in _group_moments(t))
            means = piece_means.mean(1)
            squares = piece_squares.sum(1) + size * (piece_means - means[:, None]).square().sum(1)
    mean = means.mean(0)
    m2 = squares.sum(0) + length * (means - mean).square().sum(0)
    if per_sample:
        return n * length, mean, m2, means, squares
    return n * length, mean, m2


def _pieces(x) -> int | None:
    """How many equal pieces of at most :data:`PIECE` positions each sample of a channels-last
    4-D ``x`` is reduced in; None where ``x`` is read as contiguous rows."""
    if x.dim() != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return None
    positions = x.shape[2] * x.shape[3]
    fewest = -(-positions // PIECE)
    # pieces of at least a quarter of PIECE, or the map is read as contiguous rows (a prime
    # number of positions would otherwise give pieces of one position, found by a long search)
    for pieces in range(fewest, 4 * fewest + 1):
        if positions % pieces == 0:
            return pieces
    return None


def _group_moments(t) -> tuple:
    """Each group's mean and sum of squared deviations from it, per lane, float64 (G, K), of a
    contiguous ``t`` (G groups, P elements, K lanes), in chunks of groups that stay in cache.
    Each chunk's float32 reductions go straight into (G, K) tensors; the float64 arithmetic
    that finishes them runs once over all groups (per chunk, its half-dozen small ops cost as
    much as reducing the chunk: 3.7 of 24 ms for a ResNet-18's first BN input at batch 32)."""
    groups, size, lanes = t.shape
    if groups == 0 or size == 0:
        empty = torch.zeros(groups, lanes, dtype=torch.float64, device=t.device)
        return empty, empty.clone()
    step = max(1, CHUNK // (size * lanes)) if t.device.type == "cpu" else groups
    block = _block(size) if size > BLOCKED_ABOVE and lanes == 1 else None
    scratch = _scratch(t, min(groups, step) * size * lanes)
    means, sums, squares = (torch.empty(groups, lanes, dtype=t.dtype, device=t.device) for _ in range(3))
    blocked = torch.empty(groups, dtype=torch.float64, device=t.device) if block is not None else None
    for start in range(0, groups, step):
        stop = min(groups, start + step)
        part = t[start:stop]
        m = torch.mean(part, 1, out=means[start:stop])
        centred = scratch[: part.numel()].view(part.shape)
        torch.sub(part, m[:, None], out=centred)
        # m is rounded to float32: the deviations' own sum moves the mean to the exact one
        # (otherwise its rounding would enter the groups' merge linearly)
        torch.sum(centred, 1, out=sums[start:stop])
        if lanes > 1:  # a norm across the middle axis is 6x slower than squaring in place
            torch.sum(centred.square_(), 1, out=squares[start:stop])
        elif block is None:
            torch.linalg.vector_norm(centred, dim=1, out=squares[start:stop])
        else:
            blocks = centred.view(part.shape[0], size // block, block)
            blocked[start:stop] = torch.linalg.vector_norm(blocks, dim=2).double().square().sum(1)
    residual = sums.double()
    if blocked is not None:
        q = blocked[:, None]
    elif lanes > 1:
        q = squares.double()
    else:
        q = squares.double().square()
    return means.double() + residual / size, q - residual.square() / size


def _scratch(t, numel: int):
    """A buffer of ``numel`` elements like ``t``'s: one per thread, device and dtype, reused
    from batch to batch (no allocation, no page faults), when it is a chunk's size."""
    if numel > CHUNK or t.device.type != "cpu":
        return torch.empty(numel, dtype=t.dtype, device=t.device)
    kept = getattr(_SCRATCH, "buffers", None)
    if kept is None:
        kept = _SCRATCH.buffers = {}
    buffer = kept.get(t.dtype)
    if buffer is None:
        with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
            buffer = kept[t.dtype] = torch.empty(CHUNK, dtype=t.dtype)
    return buffer


def _block(length: int) -> int:
    """The divisor of ``length`` nearest its square root (1 only for a prime length: then the
    whole row is one block of ``length``)."""
    small = [d for d in range(1, math.isqrt(length) + 1) if length % d == 0]
    best = max(small)
    return best if best > 1 else length
