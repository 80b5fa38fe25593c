"""Hand-built ONNX Conv -> BN graphs and float64 references for the ONNX runner's tests: the
exact tensor a BN layer receives and what the plain model computes (onnxruntime, unrewritten)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bncheck.numerics.moments import Moments


def conv_bn_model(
    channels: int = 4,
    *,
    running_mean: float = 0.0,
    opset: int = 17,
    tile_by_data: bool = False,
    tail: str = "relu",
    gamma_signs: tuple[float, ...] | None = None,
) -> onnx.ModelProto:
    """input (N, 3, 6, 6) -> Conv 3x3 (no padding, with bias) -> [Tile along W by a factor read from
    the data] -> BatchNormalization -> ``tail`` ("relu", "relu_pool": Relu -> MaxPool 3x3 stride 2
    pad 1 as in a ResNet stem, "pool": MaxPool alone). The conv output is a graph output too, so
    the test can read exactly what the BN layer receives. ``gamma_signs`` multiplies the BN
    scales (negative scales reverse the order MaxPool sees)."""
    rng = np.random.default_rng(channels)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (channels, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np.float32), "cb"),
        numpy_helper.from_array(
            ((rng.random(channels) + 0.5) * np.asarray(gamma_signs or 1.0)).astype(np.float32), "s"
        ),
        numpy_helper.from_array(rng.normal(0, 0.1, channels).astype(np.float32), "b"),
        numpy_helper.from_array(np.full(channels, running_mean, np.float32), "m"),
        numpy_helper.from_array((rng.random(channels) + 0.5).astype(np.float32), "v"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w", "cb"], ["conv"], name="conv")]
    bn_input = "conv"
    if tile_by_data:  # repeats = [1, 1, 1, 1 + (max(x) > 0)]: a shape inference cannot know
        inits += [
            numpy_helper.from_array(np.array([1, 1, 1], np.int64), "ones3"),
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one1"),
        ]
        nodes += [
            helper.make_node("ReduceMax", ["x"], ["xmax"], keepdims=0),
            helper.make_node("Greater", ["xmax", "zero"], ["positive"]),
            helper.make_node("Cast", ["positive"], ["positive64"], to=TensorProto.INT64),
            helper.make_node("Reshape", ["positive64", "one1"], ["extra"]),
            helper.make_node("Add", ["extra", "one1"], ["factor"]),
            helper.make_node("Concat", ["ones3", "factor"], ["repeats"], axis=0),
            helper.make_node("Tile", ["conv", "repeats"], ["tiled"]),
        ]
        bn_input = "tiled"
    nodes.append(helper.make_node("BatchNormalization", [bn_input, "s", "b", "m", "v"], ["y"], name="bn"))
    pool = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    if tail == "relu":
        nodes.append(helper.make_node("Relu", ["y"], ["out"]))
    elif tail == "relu_pool":
        nodes += [helper.make_node("Relu", ["y"], ["r"]), helper.make_node("MaxPool", ["r"], ["out"], **pool)]
    else:
        nodes.append(helper.make_node("MaxPool", ["y"], ["out"], **pool))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", channels, None, None]),
            helper.make_tensor_value_info(bn_input, TensorProto.FLOAT, ["N", channels, 4, None]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def bn_input(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([model.graph.output[1].name], {"x": x})[0].astype(np.float64)


def assert_exact_moments(moments, x64: np.ndarray, *, var_rtol: float = 1e-6) -> None:
    count = x64.size // x64.shape[1]
    mean = x64.mean(axis=(0, 2, 3))
    var = x64.var(axis=(0, 2, 3))
    assert moments.count == count
    # the mean to 1e-6 std, or to float32 rounding of the mean itself when that is coarser
    tolerance = 1e-6 * np.sqrt(var) + 2.0**-22 * np.abs(mean)
    assert np.all(np.abs(moments.mean - mean) <= tolerance), (moments.mean - mean, tolerance)
    np.testing.assert_allclose(moments.var, var, rtol=var_rtol)


def plain_output(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["out"], {"x": x})[0]


def assert_moments(m: Moments, array: np.ndarray, *, rtol: float) -> None:
    """``m`` holds the per-channel count, mean and population variance of ``array`` (N, C, ...)."""
    axes = (0,) + tuple(range(2, array.ndim))
    mean, var = array.mean(axis=axes), array.var(axis=axes)
    assert m.count == array.size // array.shape[1]
    np.testing.assert_allclose(m.mean, mean, rtol=rtol, atol=rtol * (np.sqrt(var).max() + 1e-12))
    np.testing.assert_allclose(m.var, var, rtol=rtol, atol=rtol * var.max() * 1e-3)


def with_nan_first_bn_stats(source, path):
    """Write ``source`` (an ONNX file) to ``path`` with its first BN's running mean and variance
    all NaN; returns ``path``."""
    model = onnx.load(source)
    bn = next(node for node in model.graph.node if node.op_type == "BatchNormalization")
    tensors = {t.name: t for t in model.graph.initializer}
    for name in bn.input[3:5]:
        values = numpy_helper.to_array(tensors[name])
        tensors[name].CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), name))
    onnx.save(model, path)
    return path
