"""Element counts of the moments graph: from shape inference, with a ``Size`` output only where
inference cannot tell."""

from __future__ import annotations

import numpy as np
from support.onnx_graphs import assert_exact_moments, bn_input, conv_bn_model

from bncheck.backends.onnx.source import OnnxSource


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
