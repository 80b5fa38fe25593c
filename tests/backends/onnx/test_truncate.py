"""The ONNX graph cut after the first BN layers (BN103's diagnosis runs only that part)."""

from __future__ import annotations

import numpy as np
from support.rgb_cnn import RgbCnn, save_models

from bncheck.backends import load_model
from bncheck.backends.onnx.backend import OnnxBackend
from bncheck.backends.onnx.truncate import truncated_model


def test_the_cut_graph_holds_only_what_the_first_layers_need_and_measures_the_same(tmp_path):
    source = load_model(save_models(RgbCnn().eval(), tmp_path)["onnx"])
    names = [layer.name for layer in source.bn_layers()]
    cut = truncated_model(source.model, names[:1])
    ops = [node.op_type for node in cut.graph.node]
    assert ops.count("Conv") == 1 and ops.count("BatchNormalization") == 1 and "Gemm" not in ops
    assert len(cut.graph.node) < len(source.model.graph.node) and len(cut.graph.output) == 1
    x = np.random.default_rng(0).normal(0, 1, (6, 3, 24, 24)).astype(np.float32)
    with source.runner() as full, OnnxBackend().first_layers_runner(source, names[:2]) as part:
        out, everything = full.moments(x)
        none, first = part.moments(x)
    assert none is None and out.shape == (6, 4) and set(first) == set(names[:2])
    for name in names[:2]:
        np.testing.assert_allclose(first[name].mean, everything[name].mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(first[name].var, everything[name].var, rtol=1e-6)
