"""The two ways the ONNX runner computes BN input moments inside onnxruntime, and its train graph.

* one pass over ``D = X - s`` (s starts at the running mean and moves to the data mean when a
  channel's data mean is more than a std away from it), falling back for good to the two-pass
  form after a few moves;
* element counts from shape inference, with a ``Size`` output only where inference cannot tell;
* train passes through onnxruntime's own training-mode BatchNormalization from opset 14.

Every figure is checked against float64 numpy on the exact tensors the BN layers receive.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bncheck.backends.onnx.one_pass import MAX_RECENTRES
from bncheck.backends.onnx.source import OnnxSource


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


def test_near_running_stats_the_first_shift_holds_and_no_size_op_is_added():
    model = conv_bn_model(running_mean=0.0)
    rng = np.random.default_rng(0)
    with OnnxSource(model, path=None).runner() as runner:
        for _ in range(3):
            x = rng.normal(0, 1, (8, 3, 6, 6)).astype(np.float32)
            _, moments = runner.moments(x)
            assert_exact_moments(moments["bn"], bn_input(model, x))
        assert runner.recentres == 0 and runner.one_pass_layers == ["bn"]
        ops = [node.op_type for node in runner.moments_graph().graph.node]
    assert "Size" not in ops and "Shape" not in ops and "Sub" not in ops
    assert ops.count("GlobalAveragePool") == 2 and "Add" in ops


def test_far_from_running_stats_the_shift_moves_once_and_stays_exact():
    """Data mean 1e3 stds from the running mean: the first batch is re-run once centred at its
    own mean; later batches of the same data need no move."""
    model = conv_bn_model(running_mean=0.0)
    rng = np.random.default_rng(1)
    with OnnxSource(model, path=None).runner() as runner:
        for _ in range(4):
            x = (1e3 + rng.normal(0, 1, (8, 3, 6, 6))).astype(np.float32)
            _, moments = runner.moments(x)
            assert_exact_moments(moments["bn"], bn_input(model, x))
        assert runner.recentres == 1 and runner.one_pass_layers == ["bn"]


def test_a_mean_that_keeps_moving_ends_on_the_two_pass_form():
    """A folder sorted so that each batch sits far from the last: after a bounded number of
    moves the runner stops rebuilding and uses the two-pass form, still exact."""
    model = conv_bn_model(running_mean=0.0)
    rng = np.random.default_rng(2)
    seen = []
    with OnnxSource(model, path=None).runner() as runner:
        for k in range(MAX_RECENTRES + 3):
            x = (100.0 * k + rng.normal(0, 1, (8, 3, 6, 6))).astype(np.float32)
            _, moments = runner.moments(x)
            assert_exact_moments(moments["bn"], bn_input(model, x))
            seen.append(runner.recentres)
        assert runner.one_pass_layers == []
    assert seen[-1] == MAX_RECENTRES + 1
    assert seen[-1] == seen[-2]  # no rebuilds once on the two-pass form


def test_a_constant_channel_moves_the_shift_once_and_then_never():
    """A dead filter (zero weights, a bias far from the running mean) gives a constant channel:
    one move puts the shift on it, after which it contributes exact zeros and never asks for
    another move (no storm of rebuilds)."""
    model = conv_bn_model(running_mean=0.0)
    weights = next(i for i in model.graph.initializer if i.name == "w")
    bias = next(i for i in model.graph.initializer if i.name == "cb")
    w = numpy_helper.to_array(weights).copy()
    b = numpy_helper.to_array(bias).copy()
    w[1], b[1] = 0.0, 7.0
    weights.CopyFrom(numpy_helper.from_array(w, "w"))
    bias.CopyFrom(numpy_helper.from_array(b, "cb"))
    rng = np.random.default_rng(3)
    with OnnxSource(model, path=None).runner() as runner:
        for _ in range(4):
            x = rng.normal(0, 1, (8, 3, 6, 6)).astype(np.float32)
            _, moments = runner.moments(x)
            x64 = bn_input(model, x)
            assert moments["bn"].var[1] == 0.0 and moments["bn"].mean[1] == 7.0
            keep = [0, 2, 3]
            np.testing.assert_allclose(moments["bn"].var[keep], x64.var(axis=(0, 2, 3))[keep], rtol=1e-6)
        assert runner.recentres == 1


def test_a_shape_inference_cannot_follow_gets_a_size_output_and_the_right_count():
    model = conv_bn_model(tile_by_data=True)
    rng = np.random.default_rng(4)
    with OnnxSource(model, path=None).runner() as runner:
        for sign in (1.0, -1.0):  # positive data doubles the width, negative data does not
            x = (sign * np.abs(rng.normal(0, 1, (4, 3, 6, 6)))).astype(np.float32)
            _, moments = runner.moments(x)
            x64 = bn_input(model, x)
            assert x64.shape[-1] == (8 if sign > 0 else 4)
            assert_exact_moments(moments["bn"], x64)
        ops = [node.op_type for node in runner.moments_graph().graph.node]
    assert ops.count("Size") == 1


@pytest.mark.parametrize("opset", [13, 15])
def test_train_graph_uses_the_training_mode_kernel_from_opset_14(opset):
    model = conv_bn_model(opset=opset, running_mean=0.3)
    x = np.random.default_rng(5).normal(0, 1, (8, 3, 6, 6)).astype(np.float32)
    with OnnxSource(model, path=None).runner() as runner:
        out, moments = runner.train_moments(x)
        train_graph = runner.train_graph()
    bn_nodes = [n for n in train_graph.graph.node if n.op_type == "BatchNormalization"]
    training = [n for n in bn_nodes if any(a.name == "training_mode" and a.i == 1 for a in n.attribute)]
    assert len(training) == (1 if opset >= 14 else 0)
    x64 = bn_input(model, x)
    assert_exact_moments(moments["bn"], x64)
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    mean = x64.mean(axis=(0, 2, 3), keepdims=True)
    var = x64.var(axis=(0, 2, 3), keepdims=True)
    scale, bias = inits["s"].reshape(1, -1, 1, 1), inits["b"].reshape(1, -1, 1, 1)
    want = np.maximum((x64 - mean) / np.sqrt(var + 1e-5) * scale + bias, 0)
    np.testing.assert_allclose(out, want, atol=1e-5)


def plain_output(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["out"], {"x": x})[0]


@pytest.mark.parametrize("tail", ["relu_pool", "pool"])
@pytest.mark.parametrize("signs", [None, (1.0, -1.0, 1.0, -1.0)])
def test_bn_before_a_max_pool_runs_on_the_pooled_tensor_with_the_same_outputs(tail, signs):
    """Stem pattern BN -> [Relu ->] MaxPool: the moments graph pools the shifted input first
    (negative BN scales flipped by a sign), and the model's outputs and the statistics are
    what the plain model computes and the layer receives."""
    model = conv_bn_model(tail=tail, gamma_signs=signs, running_mean=0.2)
    rng = np.random.default_rng(6)
    with OnnxSource(model, path=None).runner() as runner:
        assert runner.pool_first_layers == ["bn"]
        ops = [node.op_type for node in runner.moments_graph().graph.node]
        for _ in range(2):
            x = rng.normal(0, 1, (8, 3, 6, 6)).astype(np.float32)
            out, moments = runner.moments(x)
            np.testing.assert_allclose(out, plain_output(model, x), rtol=1e-6, atol=1e-6)
            assert_exact_moments(moments["bn"], bn_input(model, x))
        far = (50.0 + rng.normal(0, 1, (8, 3, 6, 6))).astype(np.float32)  # moves the shift
        out, moments = runner.moments(far)
        assert runner.recentres == 1
        np.testing.assert_allclose(out, plain_output(model, far), rtol=1e-6, atol=1e-5)
        assert_exact_moments(moments["bn"], bn_input(model, far))
    # the pool reads the shifted input; BN (and Relu) follow it
    assert ops.index("MaxPool") < ops.index("BatchNormalization")
    assert ("Mul" in ops[: ops.index("MaxPool")]) == (signs is not None)


def test_a_relu_with_other_readers_keeps_the_plain_order():
    model = conv_bn_model(tail="relu_pool")
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    with OnnxSource(model, path=None).runner() as runner:
        assert runner.pool_first_layers == []
        x = np.random.default_rng(8).normal(0, 1, (4, 3, 6, 6)).astype(np.float32)
        out, moments = runner.moments(x)
    np.testing.assert_allclose(out, plain_output(model, x), rtol=1e-6, atol=1e-6)
    assert_exact_moments(moments["bn"], bn_input(model, x))


def test_a_training_mode_bn_before_a_max_pool_is_not_pooled_first():
    """A node exported with training_mode=1 normalises with the statistics of what it reads:
    pooling first would change them, so the plain order stays (and the outputs agree)."""
    model = conv_bn_model(tail="relu_pool", opset=15)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    bn.output.extend(["running_mean_out", "running_var_out"])  # required in training mode
    x = np.random.default_rng(9).normal(0, 1, (8, 3, 6, 6)).astype(np.float32)
    with OnnxSource(model, path=None).runner() as runner:
        assert runner.pool_first_layers == []
        out, moments = runner.moments(x)
    np.testing.assert_allclose(out, plain_output(model, x), rtol=1e-5, atol=1e-5)
    assert_exact_moments(moments["bn"], bn_input(model, x))
