"""One matcher per producer pattern a BatchNormalization folds into, in a registry keyed by the
producer's op type (the shape of onnxslim's pattern registry). Each pattern rewrites the
producer's parameters with :mod:`bncheck.numerics.fold_math` and makes the producer (or a new
``Add``) write the BN output's name; it returns the label of what the BN was folded into."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper

from bncheck.backends.onnx.fold_edits import CannotFold, GraphEdits, Rewrite, bias_name
from bncheck.backends.onnx.graph import op_registry
from bncheck.backends.onnx.source import OnnxSource
from bncheck.numerics import fold_math

#: (edits, producer, BN input name, BN output name, scale, shift, rewrite) -> folded-into label
Pattern = Callable[[GraphEdits, onnx.NodeProto, str, str, np.ndarray, np.ndarray, Rewrite], str]

PATTERNS: dict[str, Pattern] = {}
#: ``@pattern(*op_types)``: register a pattern for producers of ``op_types``
pattern = op_registry(PATTERNS)


@pattern("Conv", "ConvTranspose")
def fold_conv(edits: GraphEdits, prod, x: str, y: str, s, t, rewrite: Rewrite) -> str:
    """Conv / ConvTranspose (grouped too): weights scaled per output channel, bias shifted."""
    label = _label(prod)
    weight, bias = edits.param(prod, 1), edits.param(prod, 2, optional=True)
    new_w, new_b = fold_math.fold_bn_into_conv(
        weight, bias, s, t, transposed=prod.op_type == "ConvTranspose", groups=int(attribute(prod, "group", 1))
    )
    _replace_weight_and_bias(edits, prod, new_w, new_b, y, rewrite)
    return label


@pattern("Gemm")
def fold_gemm(edits: GraphEdits, prod, x: str, y: str, s, t, rewrite: Rewrite) -> str:
    """Gemm with transB, alpha and beta; a beta of 0 ignores C, so C starts empty and beta is 1."""
    label = _label(prod)
    weight, c = edits.param(prod, 1), edits.param(prod, 2, optional=True)
    gemm = fold_math.Gemm(
        trans_b=bool(attribute(prod, "transB", 0)),
        alpha=float(attribute(prod, "alpha", 1.0)),
        beta=float(attribute(prod, "beta", 1.0)),
    )
    if gemm.beta == 0.0:
        new_w, new_c = fold_math.fold_bn_into_linear(weight, None, s, t, gemm=replace(gemm, beta=1.0))
        set_attribute(prod, "beta", 1.0)
    else:
        new_w, new_c = fold_math.fold_bn_into_linear(weight, c, s, t, gemm=gemm)
    _replace_weight_and_bias(edits, prod, new_w, new_c, y, rewrite)
    return label


def fold_matmul_add(edits: GraphEdits, prod, x: str, y: str, s, t, rewrite: Rewrite) -> str:
    """MatMul + constant Add (a Linear as converters write it): both constants rewritten
    (dispatched by the ``Add`` pattern of :mod:`bncheck.backends.onnx.fold_through`)."""
    label = _label(prod)
    index = edits.index
    matmul = OnnxSource.matmul_under_add(prod, index)
    if matmul is None:
        raise CannotFold("the Add is not MatMul + constant")
    if len(index.consumers.get(matmul.output[0], [])) != 1:
        raise CannotFold("the MatMul output is also used elsewhere")
    j = 1 if index.producer.get(prod.input[0]) is matmul else 0
    new_w, new_b = fold_math.fold_bn_into_matmul_add(edits.param(matmul, 1), index.constant(prod.input[j]), s, t)
    wname = matmul.input[1]
    edits.set_param(matmul, 1, new_w, rewrite)
    edits.set_param(prod, j, new_b, rewrite, bias_of=wname)
    prod.output[0] = y
    return f"{matmul.name or matmul.output[0]}+{label}"


@pattern("MatMul")
def fold_matmul(edits: GraphEdits, prod, x: str, y: str, s, t, rewrite: Rewrite) -> str:
    """A bare MatMul: its weight rewritten and a new ``Add`` of the bias in the BN's place."""
    label = _label(prod)
    new_w, new_b = fold_math.fold_bn_into_matmul_add(edits.param(prod, 1), None, s, t)
    wname = prod.input[1]
    edits.set_param(prod, 1, new_w, rewrite)
    bias = edits.add_initializer(new_b, bias_name(wname, label))
    rewrite.replacement.append(helper.make_node("Add", [x, bias], [y], name=edits.unique(f"{label}/bn_fold_add")))
    return label


def _replace_weight_and_bias(edits: GraphEdits, prod, weight, bias, y: str, rewrite: Rewrite) -> None:
    """Inputs 1 and 2 of ``prod`` become ``weight`` and ``bias``; ``prod`` writes ``y``."""
    wname = prod.input[1]
    edits.set_param(prod, 1, weight, rewrite)
    edits.set_param(prod, 2, bias, rewrite, bias_of=wname)
    prod.output[0] = y


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def attribute(node: onnx.NodeProto, name: str, default):
    """The value of attribute ``name`` of ``node``, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    """Set attribute ``name`` of ``node`` to ``value`` (replacing any earlier one)."""
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.append(helper.make_attribute(name, value))
