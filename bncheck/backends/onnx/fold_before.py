"""The consumer patterns: a BatchNormalization whose output feeds only Conv / Gemm / MatMul
ops (``x -> BN -> Conv``: a BN on a graph input, after a pooling or an activation) folds into
the *following* ops' weights and biases (:func:`bncheck.numerics.fold_math.fold_bn_before_conv`
and :func:`~bncheck.numerics.fold_math.fold_bn_before_linear`); the BN node goes and its
consumers read its input.

Tried only for a BN that does not fold into its producer, after every producer fold of the
graph was planned (the checks are :func:`~bncheck.backends.onnx.before_sites.consumer_blocker`): an op that already absorbed the BN after it (``BN -> Linear -> BN``) absorbs
the one before it too, from its already folded weights (both are per-channel affine maps, on
its input and on its output channels). A BN folds this way only when every reader
of its output can absorb it (otherwise its output is still needed) and its output is not a
graph output. Exactness:

* Conv: with zero padding the padded border would read ``BN(0) = shift`` instead of 0, so a
  padded Conv keeps the BN unless its shift is all zero; ``auto_pad=VALID`` and pads all 0 are
  exact. ``group`` is handled. ConvTranspose consumers keep the BN.
* Gemm: ``transA=0``, ``transB`` either way, ``alpha``/``beta`` kept (beta 0: C starts empty).
* MatMul on a 2-D ``(N, C)`` input (from shape inference): its weight is scaled per row and the
  shift lands in the constant ``Add`` after it (a Linear as converters write it), or in a new
  ``Add``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bncheck.backends.onnx.before_sites import attribute, consumer_blocker, conv_padded
from bncheck.backends.onnx.before_sites import label as op_label
from bncheck.backends.onnx.bn_params import type_readers, value_readers
from bncheck.backends.onnx.fold_edits import CannotFold, GraphEdits, Rewrite, bias_name
from bncheck.backends.onnx.fold_patterns import set_attribute
from bncheck.numerics import fold_math


@dataclass
class ConsumerFold:
    """One consumer's planned edit: computed first (it may refuse), applied once all agree."""

    node: onnx.NodeProto
    label: str
    apply: Callable[[], None]


def fold_before(edits: GraphEdits, bn: onnx.NodeProto, s: np.ndarray, t: np.ndarray, *,
                rank_of: Callable[[str], int | None]) -> tuple[Rewrite, str]:
    """The rewrite that folds ``bn`` (scale ``s``, shift ``t``) into every op reading its output,
    and the label of those ops; CannotFold with the reason when one of them cannot absorb it."""
    index = edits.index
    x, y = bn.input[0], bn.output[0]
    why = consumer_blocker(index, bn, shift_is_zero=not np.any(np.asarray(t) != 0), rank_of=rank_of)
    if why is not None:
        raise CannotFold(why)
    rewrite = Rewrite(bn=bn, released=[n for n in bn.input[1:5] if n])
    folds = {"Conv": _conv, "Gemm": _gemm, "MatMul": _matmul}
    plans = [folds[node.op_type](edits, node, op_label(node), x, s, t, rewrite) for node in value_readers(index, y)]
    for plan in plans:  # every consumer agreed: now edit them
        plan.apply()
    for reader in type_readers(index, y):
        rewrite.retargeted += [(reader, i, x) for i, name in enumerate(reader.input) if name == y]
    return rewrite, ", ".join(plan.label for plan in plans)


def current(edits: GraphEdits, node: onnx.NodeProto, i: int, *, optional: bool = False) -> np.ndarray | None:
    """Input ``i`` of ``node`` as it is now: the value an earlier fold of this graph gave it, or
    the constant it was."""
    if i < len(node.input) and node.input[i]:
        for init in reversed(edits.new_initializers):
            if init.name == node.input[i]:
                return numpy_helper.to_array(init)
    return edits.param(node, i, optional=optional)


def _conv(edits: GraphEdits, node, label: str, x: str, s, t, rewrite: Rewrite) -> ConsumerFold:
    weight, bias = current(edits, node, 1), current(edits, node, 2, optional=True)
    padded = conv_padded(node, tuple(weight.shape[2:]))  # exact all the same: the shift is zero
    try:
        new_w, new_b = fold_math.fold_bn_before_conv(
            weight, bias, s, t, groups=int(attribute(node, "group", 1)), padding=1 if padded else 0
        )
    except ValueError as exc:
        raise CannotFold(f"{label}: {exc}") from exc

    def apply() -> None:
        _set_weight_and_bias(edits, node, new_w, new_b, rewrite)
        rewrite.retargeted.append((node, 0, x))

    return ConsumerFold(node, label, apply)


def _gemm(edits: GraphEdits, node, label: str, x: str, s, t, rewrite: Rewrite) -> ConsumerFold:
    weight, c = current(edits, node, 1), current(edits, node, 2, optional=True)
    gemm = fold_math.Gemm(
        trans_b=bool(attribute(node, "transB", 0)),
        alpha=float(attribute(node, "alpha", 1.0)),
        beta=float(attribute(node, "beta", 1.0)),
    )
    empty_c = gemm.beta == 0.0
    try:
        new_w, new_c = fold_math.fold_bn_before_linear(
            weight, None if empty_c else c, s, t, gemm=fold_math.Gemm(gemm.trans_b, gemm.alpha, 1.0) if empty_c else gemm
        )
    except ValueError as exc:
        raise CannotFold(f"{label}: {exc}") from exc

    def apply() -> None:
        if empty_c:
            set_attribute(node, "beta", 1.0)
        _set_weight_and_bias(edits, node, new_w, new_c, rewrite)
        rewrite.retargeted.append((node, 0, x))

    return ConsumerFold(node, label, apply)


def _matmul(edits: GraphEdits, node, label: str, x: str, s, t, rewrite: Rewrite) -> ConsumerFold:
    weight = current(edits, node, 1)
    try:  # MatMul(X, W) with W (in, out) is a Gemm without transB
        new_w, new_b = fold_math.fold_bn_before_linear(weight, None, s, t, gemm=fold_math.Gemm(trans_b=False))
    except ValueError as exc:
        raise CannotFold(f"{label}: {exc}") from exc
    add, j = _constant_add_after(edits, node, int(weight.shape[-1]))

    def apply() -> None:
        wname = node.input[1]
        edits.set_param(node, 1, new_w, rewrite)
        rewrite.retargeted.append((node, 0, x))
        if add is not None:
            bias = np.asarray(current(edits, add, j), dtype=np.float64)
            edits.set_param(add, j, (bias + new_b).astype(new_w.dtype), rewrite, bias_of=wname)
            return
        # the MatMul moves to the BN's place (its inputs are the BN input and a constant)
        # and a new Add of the bias writes its old output
        out = node.output[0]
        moved = onnx.NodeProto()
        moved.CopyFrom(node)
        moved.input[0] = x
        moved.output[0] = edits.unique(f"{out}_before_bias")
        bias = edits.add_initializer(new_b, bias_name(wname, node.name or out))
        rewrite.removed.append(node)
        rewrite.replacement += [moved, helper.make_node("Add", [moved.output[0], bias], [out],
                                                        name=edits.unique(f"{node.name or out}/bn_fold_add"))]

    return ConsumerFold(node, label, apply)


def _constant_add_after(edits: GraphEdits, node, n_out: int) -> tuple[onnx.NodeProto | None, int]:
    """The ``Add`` of a constant that alone reads the MatMul's output (the Linear's bias)."""
    index = edits.index
    out = node.output[0]
    readers = index.consumers.get(out, [])
    if out in index.graph_outputs or len(readers) != 1 or readers[0].op_type != "Add":
        return None, 0
    add = readers[0]
    if list(add.input).count(out) != 1:
        return None, 0
    j = 1 - list(add.input).index(out)
    if not edits.index.is_constant(add.input[j]):
        return None, 0
    value = current(edits, add, j)
    if not np.issubdtype(value.dtype, np.floating) or value.ndim > 2 or (value.ndim and value.shape[-1] not in (1, n_out)):
        return None, 0
    if value.ndim == 2 and value.shape[0] != 1:
        return None, 0
    return add, j


def _set_weight_and_bias(edits: GraphEdits, node, weight, bias, rewrite: Rewrite) -> None:
    wname = node.input[1]
    edits.set_param(node, 1, weight, rewrite)
    edits.set_param(node, 2, bias, rewrite, bias_of=wname)
