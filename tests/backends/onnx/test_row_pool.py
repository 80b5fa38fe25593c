"""Per-channel variance of large feature maps inside onnxruntime within 1e-6 relative of float64
numpy, on the one-pass (shifted) and two-pass forms, up to 1024x1024 maps and mean/std 1e3."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bncheck.backends.onnx.one_pass import MAX_RECENTRES
from bncheck.backends.onnx.row_pool import BLOCKED_ABOVE, block_size
from bncheck.backends.onnx.source import OnnxSource


def _bn_model(channels: int, running_mean: float) -> onnx.ModelProto:
    """x (N, C, H, W), H and W dynamic -> depthwise 1x1 Conv (identity weights) -> BatchNormalization."""
    inits = [
        numpy_helper.from_array(np.ones((channels, 1, 1, 1), np.float32), "w"),
        numpy_helper.from_array(np.ones(channels, np.float32), "s"),
        numpy_helper.from_array(np.zeros(channels, np.float32), "b"),
        numpy_helper.from_array(np.full(channels, running_mean, np.float32), "m"),
        numpy_helper.from_array(np.ones(channels, np.float32), "v"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], group=channels),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn"),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("size", [256, 1024])
@pytest.mark.parametrize("ratio", [0.0, 1e3])
@pytest.mark.parametrize("two_pass", [False, True])
def test_variance_of_large_maps_matches_float64_within_1e6(size, ratio, two_pass):
    rng = np.random.default_rng(size)
    x = rng.normal(ratio, 1.0, (2, 2, size, size)).astype(np.float32)
    x64 = x.astype(np.float64)
    model = _bn_model(2, running_mean=0.0)
    with OnnxSource(model, path=None).runner() as runner:
        if two_pass:  # small batches whose mean keeps moving put the runner on the two-pass form
            for k in range(MAX_RECENTRES + 1):
                runner.moments(rng.normal(100.0 * (k + 1), 1.0, (2, 2, 8, 8)).astype(np.float32))
        _, moments = runner.moments(x)
        assert runner.one_pass_layers == ([] if two_pass else ["bn"])
        ops = [node.op_type for node in runner.moments_graph().graph.node]
    assert "AveragePool" in ops  # the blocked average, not one float32 sum over the map
    m = moments["bn"]
    np.testing.assert_allclose(m.var, x64.var(axis=(0, 2, 3)), rtol=1e-6, atol=0)
    # the mean to 1e-6 std, or to the float32 rounding of the mean where that is coarser
    np.testing.assert_allclose(m.mean, x64.mean(axis=(0, 2, 3)), rtol=2.0**-22, atol=1e-6)


def test_block_sizes():
    assert block_size((2, 3, 64, 64)) is None  # 4096 elements: one GlobalAveragePool is enough
    assert 64 * 64 == BLOCKED_ABOVE
    assert block_size((2, 3, 1024, 1024)) == 1024
    assert block_size((2, 3, 256, 256)) == 256
    assert block_size((2, 3, 1 << 20)) == 1024  # a long 1-d signal: blocks of sqrt(length)
    assert block_size((2, 3, 4099, 2)) == 2
    assert block_size((2, 3, None, 300)) is None
