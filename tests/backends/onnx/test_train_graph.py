"""Train passes through onnxruntime's own training-mode BatchNormalization from opset 14, and the
composition of standard ops before."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper
from support.onnx_graphs import assert_exact_moments, bn_input, conv_bn_model

from bncheck.backends.onnx.source import OnnxSource


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
