"""The ONNX runner end to end: opsets and parameter sources, half-precision models, BN nodes
inside control-flow subgraphs; every figure against float64 numpy on the BN's real input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.onnx_graphs import assert_moments

from bncheck.backends.onnx.source import OnnxSource


@pytest.mark.parametrize("opset", [9, 14, 18, 21])
@pytest.mark.parametrize("params", ["initializer", "constant"])
def test_onnx_opsets_and_parameter_sources(opset, params, onnx_bn):
    """BN straight on the graph input (rank 4) across opsets (ReduceMean axes as attribute
    before 18, as input from 18); train mode checked against the batch-norm formula."""
    model, values = onnx_bn(3, opset=opset, params=params, producer="input")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"  # dynamic batch
    x = np.random.default_rng(opset).normal(1.0, 2.0, (6, 3, 4, 4)).astype(np.float32)
    with OnnxSource(model, path=None).runner() as runner:
        (name,) = runner.layers
        out, moments = runner.moments(x)
        train_out, train_moments = runner.train_moments(x)
    x64 = x.astype(np.float64)
    assert_moments(moments[name], x64, rtol=1e-5)
    assert_moments(train_moments[name], x64, rtol=1e-5)

    def bn(mean, var):
        shape = (1, -1, 1, 1)
        scale, bias = values["scale"].reshape(shape), values["B"].reshape(shape)
        return (x64 - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5) * scale + bias

    np.testing.assert_allclose(out, bn(values["mean"], values["var"]), atol=1e-5)
    np.testing.assert_allclose(train_out, bn(x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))), atol=1e-4)


def test_onnx_float16_model_statistics_are_computed_in_float32():
    rng = np.random.default_rng(5)
    c = 3
    inits = [
        numpy_helper.from_array((rng.random(c) + 0.5).astype(np.float16), name)
        for name in ("s", "b", "m", "v")
    ]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", c, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", c, 4, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    x = (rng.random((5, c, 4, 4)) * 3 + 2).astype(np.float16)
    with OnnxSource(model, path=None).runner() as runner:
        assert runner.input_spec.dtype == "float16"
        out, moments = runner.moments(x.astype(np.float32))  # cast to the input's dtype
        _, train_moments = runner.train_moments(x)
    assert out.dtype == np.float16
    assert_moments(moments["bn"], x.astype(np.float64), rtol=1e-6)
    assert_moments(train_moments["bn"], x.astype(np.float64), rtol=2e-3)  # float16 arithmetic


def test_onnx_bn_inside_a_subgraph_is_unhookable():
    """An If node whose then-branch holds a BN: listed in ``unhookable``; the BN of the main
    graph is still observed."""
    rng = np.random.default_rng(4)
    c = 3
    params = [
        numpy_helper.from_array(v.astype(np.float32), n)
        for n, v in [("s", rng.uniform(0.5, 1.5, c)), ("b", rng.normal(size=c)), ("m", rng.normal(size=c)), ("v", rng.uniform(0.5, 2, c))]
    ]
    sub_bn = helper.make_node("BatchNormalization", ["h", "s", "b", "m", "v"], ["y_then"], name="inner_bn")
    shape = ["N", c, 4, 4]
    then_branch = helper.make_graph(
        [sub_bn], "then", [], [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, shape)]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["y_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, shape)],
    )
    nodes = [
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["h"], name="outer_bn"),
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "cond_value")),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=params,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    source = OnnxSource(model, path=None)
    names = [layer.name for layer in source.bn_layers()]
    inner = next(n for n in names if n.endswith("inner_bn"))
    with source.runner() as runner:
        assert runner.layers == ["outer_bn"]
        assert "subgraph" in runner.unhookable[inner]
        x = rng.normal(size=(5, c, 4, 4)).astype(np.float32)
        _, moments = runner.moments(x)
        train_out = runner.forward(x, bn="train")
    assert list(moments) == ["outer_bn"]
    assert_moments(moments["outer_bn"], x.astype(np.float64), rtol=1e-5)
    assert np.isfinite(train_out).all()
