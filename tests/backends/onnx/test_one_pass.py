"""The one-pass moments over ``D = X - s``: s starts at the running mean and moves to the data
mean when a channel's data mean is more than a std away from it, falling back for good to the
two-pass form after a few moves. Checked against float64 numpy on the exact BN inputs."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper
from support.onnx_graphs import assert_exact_moments, bn_input, conv_bn_model

from bncheck.backends.onnx.one_pass import MAX_RECENTRES
from bncheck.backends.onnx.source import OnnxSource


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
