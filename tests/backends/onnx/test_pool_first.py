"""CNN stems (BN -> [Relu ->] MaxPool): the moments graph pools the shifted input first, and only
where that is exact."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from support.onnx_graphs import assert_exact_moments, bn_input, conv_bn_model, plain_output

from bncheck.backends.onnx.source import OnnxSource


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
