"""BN parameters written as shape-independent constant subgraphs (a uniform value broadcast
to a runtime shape) are constants for the fold; checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bncheck.commands.fold import fold

RNG = np.random.default_rng(5)


def test_dynamo_bn1d_affine_false_after_linear(tmp_path, randomize_bn, export_onnx, ort_run):
    """torch.onnx.export(dynamo=True, optimize=False) writes Expand(CastLike(1), Shape(x))."""
    torch = pytest.importorskip("torch")
    model = randomize_bn(torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.BatchNorm1d(6, affine=False)))
    src = export_onnx(model, torch.randn(4, 8), tmp_path / "m.onnx", dynamo=True, optimize=False, opset=18)
    ops = [n.op_type for n in onnx.load(str(src)).graph.node]
    assert "Expand" in ops and "BatchNormalization" in ops
    out = tmp_path / "f.onnx"
    report = fold(src, out, timing=False)
    assert report.extras["fold"]["layers_folded"] == 1, report.layer_extras
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Gemm"]
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    (ref,), (got,) = ort_run(src, x), ort_run(out, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def _uniform_param(kind: str, name: str, value: float, x: str) -> list[onnx.NodeProto]:
    """Nodes writing ``name`` = ``value`` broadcast to (C,) read from ``x``'s runtime shape."""
    shape = [helper.make_node("Shape", [x], [f"{name}_shape"], start=1, end=2)]
    if kind == "constant_of_shape":
        return shape + [helper.make_node("ConstantOfShape", [f"{name}_shape"], [name],
                                         value=numpy_helper.from_array(np.array([value], np.float32)))]
    if kind == "tile":
        return shape + [
            helper.make_node("Constant", [], [f"{name}_one"], value=numpy_helper.from_array(np.array([value], np.float64))),
            helper.make_node("Cast", [f"{name}_one"], [f"{name}_f"], to=TensorProto.FLOAT),
            helper.make_node("Tile", [f"{name}_f", f"{name}_shape"], [name]),
        ]
    return shape + [
        helper.make_node("Constant", [], [f"{name}_v"], value_float=value),
        helper.make_node("CastLike", [f"{name}_v", x], [f"{name}_c"]),
        helper.make_node("Expand", [f"{name}_c", f"{name}_shape"], [name]),
    ]


@pytest.mark.parametrize("kind", ["constant_of_shape", "tile", "expand_castlike"])
def test_uniform_scale_and_bias_from_runtime_shapes(tmp_path, ort_run, kind):
    c = 4
    w = numpy_helper.from_array(RNG.normal(size=(c, 3, 3, 3)).astype(np.float32), "w")
    mean = numpy_helper.from_array(RNG.normal(size=c).astype(np.float32), "mean")
    var = numpy_helper.from_array(RNG.uniform(0.3, 2, c).astype(np.float32), "var")
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], name="conv")]
    nodes += _uniform_param(kind, "scale", 1.5, "conv") + _uniform_param(kind, "bias", -0.5, "conv")
    nodes.append(helper.make_node("BatchNormalization", ["conv", "scale", "bias", "mean", "var"], ["y"], name="bn"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w, mean, var])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    src, out = tmp_path / "m.onnx", tmp_path / "f.onnx"
    onnx.save(model, str(src))
    report = fold(src, out, timing=False)
    assert report.extras["fold"]["layers_folded"] == 1, report.layer_extras
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Conv"]
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    (ref,), (got,) = ort_run(src, x), ort_run(out, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_a_shape_reader_that_stays_alive_reads_the_folded_output(tmp_path, ort_run):
    """Shape(conv) feeding a Reshape after the BN is moved onto the BN's output (same shape)."""
    c = 3
    w = numpy_helper.from_array(RNG.normal(size=(c, 3, 1, 1)).astype(np.float32), "w")
    inits = [w] + [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
                   (("s", RNG.uniform(0.5, 1.5, c)), ("b", RNG.normal(size=c)), ("m", RNG.normal(size=c)), ("v", RNG.uniform(0.5, 2, c)))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], name="conv"),
        helper.make_node("Shape", ["conv"], ["shape"]),
        helper.make_node("BatchNormalization", ["conv", "s", "b", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    src, out = tmp_path / "m.onnx", tmp_path / "f.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), str(src))
    report = fold(src, out, timing=False)
    assert report.extras["fold"]["layers_folded"] == 1
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    (ref,), (got,) = ort_run(src, x), ort_run(out, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
