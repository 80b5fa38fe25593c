"""Sessions whose weights are handed to onnxruntime in memory (``bncheck.backends.onnx.in_memory``):
the same outputs as a session of the serialised model, on the bundled model and on a real
trained one, for every element type numpy holds; what cannot move stays in the message; and
where onnxruntime refuses the form, the serialised model is used instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from support.onnx_graphs import assert_exact_moments, bn_input, conv_bn_model

from bncheck.backends.onnx import in_memory, session
from bncheck.backends.onnx.session import open_session
from bncheck.backends.onnx.source import OnnxSource
from tests.support.real_models import PPOCR_CLS, model_file

SAMPLES = Path(__file__).resolve().parents[3] / "sample_models"


def _bytes_session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _outputs(sess, x: np.ndarray) -> list[np.ndarray]:
    return sess.run(None, {sess.get_inputs()[0].name: x})


def test_the_bundled_model_runs_with_its_weights_in_memory():
    model = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    parts = in_memory.light(model)
    large = {i.name for i in model.graph.initializer if len(i.raw_data) >= in_memory.SMALL_BYTES}
    assert large and set(parts.names) == large
    declared = onnx.load_from_string(parts.data)
    for init in declared.graph.initializer:
        if init.name in large:
            assert init.data_location == TensorProto.EXTERNAL and not init.raw_data
            assert {e.key: e.value for e in init.external_data}["location"] == in_memory.LOCATION
    assert len(parts.data) < model.ByteSize() / 2
    for name, array in zip(parts.names, parts.arrays, strict=True):
        original = next(i for i in model.graph.initializer if i.name == name)
        np.testing.assert_array_equal(array, numpy_helper.to_array(original))
    fast = open_session(model)
    assert [a.shape for a in fast._bncheck_weights[0]] == [a.shape for a in parts.arrays]
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    for a, b in zip(_outputs(fast, x), _outputs(_bytes_session(model), x), strict=True):
        np.testing.assert_array_equal(a, b)


def _typed_model(dtype: int, values: np.ndarray, *, as_input: bool = False) -> onnx.ModelProto:
    """Y = Cast(X + W to float32) for a W of ``dtype`` (1,024 elements: it moves)."""
    init = numpy_helper.from_array(values, "W")
    x = helper.make_tensor_value_info("X", dtype, list(values.shape))
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(values.shape))
    nodes = [helper.make_node("Add", ["X", "W"], ["S"]), helper.make_node("Cast", ["S"], ["Y"], to=TensorProto.FLOAT)]
    inputs = [x, helper.make_tensor_value_info("W", dtype, list(values.shape))] if as_input else [x]
    graph = helper.make_graph(nodes, "typed", inputs, [y], [init])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize(
    ("dtype", "np_dtype"),
    [(TensorProto.FLOAT, np.float32), (TensorProto.FLOAT16, np.float16), (TensorProto.DOUBLE, np.float64),
     (TensorProto.INT64, np.int64), (TensorProto.INT32, np.int32), (TensorProto.UINT8, np.uint8)],
)  # fmt: skip
def test_every_numpy_element_type_moves_and_gives_the_same_outputs(dtype, np_dtype):
    rng = np.random.default_rng(1)
    values = (rng.random((4, 256)) * 100).astype(np_dtype)
    model = _typed_model(dtype, values)
    assert in_memory.light(model).names == ["W"]
    x = (rng.random((4, 256)) * 100).astype(np_dtype)
    np.testing.assert_array_equal(_outputs(open_session(model), x)[0], _outputs(_bytes_session(model), x)[0])


def test_overridable_and_small_initializers_stay_in_the_message():
    values = np.arange(1024, dtype=np.float32).reshape(4, 256)
    assert in_memory.light(_typed_model(TensorProto.FLOAT, values, as_input=True)).names == []
    assert in_memory.light(_typed_model(TensorProto.FLOAT, values[:, :8])).names == []  # 128 bytes
    model = _typed_model(TensorProto.FLOAT, values, as_input=True)
    x = np.ones((4, 256), np.float32)
    np.testing.assert_array_equal(_outputs(open_session(model), x)[0], values + 1)


def test_a_real_trained_model_whose_weights_are_graph_inputs_runs_as_before():
    model = onnx.load(str(model_file(PPOCR_CLS)))
    assert in_memory.light(model).names == []  # Paddle2ONNX lists every weight as a graph input
    x = np.random.default_rng(2).random((2, 3, 48, 192), dtype=np.float32)
    for a, b in zip(_outputs(open_session(model), x), _outputs(_bytes_session(model), x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_where_onnxruntime_refuses_weights_in_memory_the_serialised_model_runs(monkeypatch):
    model = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    x = np.random.default_rng(3).random((2, 1, 8, 8), dtype=np.float32)
    expected = _outputs(open_session(model), x)

    def refused(*args, **kwargs):
        raise RuntimeError("no external initializers in this onnxruntime")

    monkeypatch.setattr(session, "open_light", refused)
    plain = open_session(model)
    assert not hasattr(plain, "_bncheck_weights")
    for a, b in zip(_outputs(plain, x), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_initializer_no_node_reads_is_left_out_and_the_rest_still_moves():
    values = np.arange(1024, dtype=np.float32).reshape(4, 256)
    model = _typed_model(TensorProto.FLOAT, values)
    model.graph.initializer.append(numpy_helper.from_array(values * 2, "unused"))
    parts = in_memory.light(model)
    assert parts.names == ["W"]
    assert "unused" not in {i.name for i in onnx.load_from_string(parts.data).graph.initializer}
    fast = open_session(model)
    assert hasattr(fast, "_bncheck_weights")
    np.testing.assert_array_equal(_outputs(fast, np.ones((4, 256), np.float32))[0], values + 1)


def test_the_moments_session_opens_with_its_weights_in_memory(monkeypatch):
    """The moments graph's BN nodes read moved running means, leaving the model's own unused:
    onnxruntime refused the in-memory form for it and every moments session was serialised."""
    def serialise(*args, **kwargs):
        raise AssertionError("the moments session was serialised")

    model = conv_bn_model(channels=300)  # every BN vector 1,200 bytes: they move
    assert {i.name for i in model.graph.initializer} == set(in_memory.light(model).names)
    monkeypatch.setattr(session, "serialized", serialise)
    x = np.random.default_rng(5).normal(0, 1, (4, 3, 6, 6)).astype(np.float32)
    with OnnxSource(model, path=None).runner() as runner:
        _, moments = runner.moments(x)
    assert_exact_moments(moments["bn"], bn_input(model, x))


def test_split_weights_leave_one_copy_that_every_session_of_a_runner_shares(monkeypatch):
    """A runner splits its model's weights off once a pass: its moments, train and plain
    sessions take the same arrays, whose values are the model's, and their figures are those of
    the model run whole; ``release`` lets go of them with the sessions (a later pass's other
    sessions need the memory)."""
    model = conv_bn_model(channels=64)  # a 64 x 3 x 3 x 3 weight: 6.9 KB, given in memory
    weights = in_memory.split_weights(model)
    assert set(weights.arrays) == {"w"}
    np.testing.assert_array_equal(weights.arrays["w"], numpy_helper.to_array(model.graph.initializer[0]))
    lean = {i.name: i for i in weights.lean.graph.initializer}
    assert lean["w"].data_location == TensorProto.EXTERNAL and not lean["w"].raw_data
    calls = []
    original = in_memory.split_weights
    monkeypatch.setattr("bncheck.backends.onnx.runner.split_weights", lambda m: calls.append(m) or original(m))
    x = np.random.default_rng(3).normal(0, 1, (16, 3, 6, 6)).astype(np.float32)
    with OnnxSource(model, path=None).runner() as runner:
        _, moments = runner.moments(x)
        runner.release()
        _, again = runner.moments(x)
        runner.forward(x, bn="train")
        out = runner.forward(x)
        held = [s._bncheck_weights[0] for s in runner._sessions.values()]
    assert len(calls) == 2 and len(held) == 3  # before and after the release; moments, train and plain
    assert len({id(a) for arrays in held for a in arrays}) == 1  # one array, in every session
    assert_exact_moments(moments["bn"], bn_input(model, x))
    np.testing.assert_array_equal(again["bn"].mean, moments["bn"].mean)
    np.testing.assert_allclose(out, _outputs(_bytes_session(model), x)[0], rtol=1e-6, atol=1e-6)


def test_a_refused_in_memory_form_with_split_weights_serialises_the_weights_back(monkeypatch):
    """Where onnxruntime refuses the in-memory form, the lean model's declarations get their
    values again before it is serialised whole (else the session would look for a file that
    does not exist)."""
    model = conv_bn_model(channels=64)
    weights = in_memory.split_weights(model)

    def refuse(*args, **kwargs):
        raise RuntimeError("refused")

    monkeypatch.setattr(session, "open_light", refuse)
    sess = open_session(weights.lean, weights=weights)
    x = np.random.default_rng(4).normal(0, 1, (3, 3, 6, 6)).astype(np.float32)
    for a, b in zip(_outputs(sess, x), _outputs(_bytes_session(model), x), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_loaded_model_is_hashed_from_the_bytes_it_was_parsed_from(tmp_path):
    import hashlib

    path = SAMPLES / "digits_cnn.onnx"
    source = OnnxSource.load(path)
    assert source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source.info().sha256 == source.sha256
