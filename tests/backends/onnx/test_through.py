"""Per-channel constant Add/Mul between a producer and its BN are looked through: the folded
graph (no BN, no Add/Mul left) computes what onnxruntime computes on the original."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bncheck.commands.fold import fold

RNG = np.random.default_rng(3)


def _bn(x, y, c):
    inits = [
        numpy_helper.from_array(RNG.uniform(0.5, 1.5, c).astype(np.float32), "bn.scale"),
        numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), "bn.B"),
        numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), "bn.mean"),
        numpy_helper.from_array(RNG.uniform(0.3, 2.0, c).astype(np.float32), "bn.var"),
    ]
    return helper.make_node("BatchNormalization", [x, "bn.scale", "bn.B", "bn.mean", "bn.var"], [y], name="bn"), inits


def _const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.float32), name + "_t"))


def _model(nodes, inits, x_shape, y_shape, opset=13):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return model


def _fold_and_compare(tmp_path, model, x, ort_run):
    src, out = tmp_path / "m.onnx", tmp_path / "f.onnx"
    onnx.save(model, str(src))
    report = fold(src, out, timing=False)
    (ref,), (got,) = ort_run(src, x), ort_run(out, x)
    return report, onnx.load(str(out)), float(np.abs(ref - got).max() / np.abs(ref).max())


def test_convtranspose_add_bias_bn_folds_exactly(tmp_path, ort_run):
    """Paddle2ONNX's ConvTranspose -> Add((1, C, 1, 1) constant) -> BN, grouped."""
    c, groups = 6, 2
    w = numpy_helper.from_array(RNG.normal(size=(4, c // groups, 2, 2)).astype(np.float32), "w")
    bn, inits = _bn("ct_b", "y", c)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["ct"], name="ct", strides=[2, 2], group=groups),
        _const("bias", RNG.normal(size=(1, c, 1, 1))),
        helper.make_node("Add", ["ct", "bias"], ["ct_b"], name="add_bias"),
        bn,
    ]
    x = RNG.standard_normal((2, 4, 5, 7)).astype(np.float32)
    report, folded, err = _fold_and_compare(tmp_path, _model(nodes, [w, *inits], [None, 4, None, None], None), x, ort_run)
    assert report.extras["fold"]["layers_folded"] == 1, report.layer_extras
    assert [n.op_type for n in folded.graph.node] == ["ConvTranspose"]
    assert err < 1e-5


def test_conv_mul_then_add_scalar_bn(tmp_path, ort_run):
    c = 5
    w = numpy_helper.from_array(RNG.normal(size=(c, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), "b")
    bn, inits = _bn("shifted", "y", c)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        _const("m", RNG.uniform(0.5, 2, size=(c, 1, 1))),
        helper.make_node("Mul", ["m", "conv"], ["scaled"], name="mul"),
        _const("k", 0.25),
        helper.make_node("Add", ["scaled", "k"], ["shifted"], name="add"),
        bn,
    ]
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    report, folded, err = _fold_and_compare(tmp_path, _model(nodes, [w, b, *inits], [2, 3, 8, 8], None), x, ort_run)
    assert report.extras["fold"]["layers_folded"] == 1
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    assert err < 1e-5


def test_gemm_add_vector_bn(tmp_path, ort_run):
    c = 4
    w = numpy_helper.from_array(RNG.normal(size=(c, 6)).astype(np.float32), "w")
    bn, inits = _bn("lin", "y", c)
    nodes = [
        helper.make_node("Gemm", ["x", "w"], ["g"], name="gemm", transB=1),
        _const("v", RNG.normal(size=c)),
        helper.make_node("Add", ["g", "v"], ["lin"], name="add"),
        bn,
    ]
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    report, folded, err = _fold_and_compare(tmp_path, _model(nodes, [w, *inits], [3, 6], None), x, ort_run)
    assert report.extras["fold"]["layers_folded"] == 1
    assert err < 1e-5


@pytest.mark.parametrize("shape", [(1, 5, 8, 8), (1, 1, 8, 1), (2, 5, 1, 1)], ids=["spatial", "rows", "batch"])
def test_a_constant_that_is_not_per_channel_keeps_the_bn(shape):
    c = 5
    w = numpy_helper.from_array(RNG.normal(size=(c, 3, 3, 3)).astype(np.float32), "w")
    bn, inits = _bn("added", "y", c)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        _const("k", RNG.normal(size=shape)),
        helper.make_node("Add", ["conv", "k"], ["added"], name="add"),
        bn,
    ]
    report = fold(_model(nodes, [w, *inits], [2, 3, 8, 8], None), None, timing=False)
    (outcome,) = [e["fold"] for e in report.layer_extras.values()]
    assert outcome["status"] == "kept" and "Add" in outcome["reason"]


def test_a_producer_output_used_twice_keeps_the_bn():
    c = 3
    w = numpy_helper.from_array(RNG.normal(size=(c, 3, 1, 1)).astype(np.float32), "w")
    bn, inits = _bn("added", "z", c)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], name="conv"),
        _const("k", RNG.normal(size=(1, c, 1, 1))),
        helper.make_node("Add", ["conv", "k"], ["added"], name="add"),
        bn,
        helper.make_node("Add", ["z", "conv"], ["y"], name="residual"),
    ]
    report = fold(_model(nodes, [w, *inits], [1, 3, 4, 4], None), None, timing=False)
    (outcome,) = [e["fold"] for e in report.layer_extras.values()]
    assert outcome["status"] == "kept" and "Add" in outcome["reason"]
