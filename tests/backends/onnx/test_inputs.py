"""The one ONNX input-spec reader: per-sample shape, batch, dtype of every real graph input."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper

from bncheck.backends.interface import InputSpec
from bncheck.backends.onnx.inputs import input_spec, input_specs
from bncheck.backends.onnx.source import OnnxSource
from bncheck.errors import UsageError

SAMPLES = Path(__file__).resolve().parents[3] / "sample_models"


def _model(*inputs, initializers=()):
    graph = helper.make_graph([], "g", list(inputs), [], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def test_sample_models():
    assert input_spec(OnnxSource.load(SAMPLES / "digits_cnn.onnx").model).shape == (1, 8, 8)
    assert OnnxSource.load(SAMPLES / "cancer_mlp.onnx").input_spec().shape == (30,)


def test_shapes_batches_and_dtypes():
    model = _model(
        helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 3, 224, None]),
        helper.make_tensor_value_info("fixed", TensorProto.INT64, [4, 7]),
        helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        helper.make_tensor_value_info("free", TensorProto.DOUBLE, None),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [2]),
        initializers=[helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])],
    )
    assert input_specs(model) == [
        InputSpec("x", (3, 224, None), "float16", batch=None),
        InputSpec("fixed", (7,), "int64", batch=4),
        InputSpec("flag", (), "bool", batched=False),
        InputSpec("free", None, "float64"),
    ]
    assert input_spec(model).name == "x"


def test_no_input_is_a_usage_error():
    model = _model(
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]),
        initializers=[helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])],
    )
    assert input_specs(model) == []
    with pytest.raises(UsageError, match="no input"):
        input_spec(model)
