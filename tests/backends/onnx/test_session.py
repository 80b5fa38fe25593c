"""The one onnxruntime session factory: a model over protobuf's 2 GiB whose weights cannot be
handed over in memory goes through a temporary file with external data, and gives what the
in-memory session gives. (The limit is lowered for the test: the same code path without
writing 2 GiB.)"""

from __future__ import annotations

import numpy as np
import pytest

from bncheck.backends.onnx import external_data, session
from bncheck.backends.onnx.session import SessionError, executable, open_session
from bncheck.errors import BncheckError


def test_a_model_over_the_message_limit_runs_from_external_data(onnx_bn, monkeypatch):
    model, _ = onnx_bn(4)
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    name = model.graph.input[0].name
    in_memory = open_session(model).run(None, {name: x})
    monkeypatch.setattr(external_data, "PROTO_LIMIT", 64)
    monkeypatch.setattr(session, "open_light", _refused)
    assert not external_data.fits_in_one_message(model)
    from_file = open_session(model).run(None, {name: x})
    for a, b in zip(in_memory, from_file, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(executable(model, optimize=False)((x,))[0], in_memory[0], rtol=1e-5, atol=1e-6)


def _refused(*args, **kwargs):
    raise RuntimeError("onnxruntime refuses in-memory initializers here")


def test_tensor_data_bytes_counts_initializers_and_constants(onnx_bn):
    model, _ = onnx_bn(4, params="constant")
    stored = external_data.tensor_data_bytes(model)
    assert stored is not None and stored >= 4 * 4 * 4  # four float32 vectors of 4 channels
    assert external_data.fits_in_one_message(model)


def test_a_model_onnxruntime_refuses_is_one_clear_error(onnx_bn):
    model, _ = onnx_bn(3)
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(SessionError, match=r"^onnxruntime cannot load the model \(.+\)\.$"):
        open_session(model)
    with pytest.raises(BncheckError, match="bncheck verifies with onnxruntime on CPU"):
        executable(model, optimize=True)


def test_verification_sessions_do_not_spin_and_give_the_same_outputs(onnx_bn):
    model, _ = onnx_bn(4)
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    name = model.graph.input[0].name
    quiet = open_session(model, optimize=False, spin=False)
    default = open_session(model, optimize=False)
    key = "session.intra_op.allow_spinning"
    assert quiet.get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: onnxruntime spins
        default.get_session_options().get_session_config_entry(key)
    np.testing.assert_array_equal(quiet.run(None, {name: x})[0], default.run(None, {name: x})[0])
