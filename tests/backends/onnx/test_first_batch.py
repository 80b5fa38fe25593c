"""The ONNX runner's first batch: a probe of a few of its samples, run first in a chunk of their
own, places the one-pass shifts (a data mean far from the running mean re-runs those samples,
not the whole batch) and tells the output's size a sample, so that chunks hold at most
``CHUNK_BYTES`` of output as well as of BN input; the probe's figures count, and the batch's
outputs and per-sample moments come back in its own order. Figures checked against float64
numpy and the plain model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from support.onnx_graphs import assert_exact_moments, bn_input, conv_bn_model, plain_output

from bncheck.backends.onnx import runner as onnx_runner
from bncheck.backends.onnx.source import OnnxSource


def _spy_runs(monkeypatch) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    original = onnx_runner.OnnxRunner._run

    def run(self, kind, names, x):
        runs.append((kind, len(x)))
        return original(self, kind, names, x)

    monkeypatch.setattr(onnx_runner.OnnxRunner, "_run", run)
    return runs


def test_a_far_data_mean_re_runs_the_probe_not_the_first_batch(monkeypatch):
    """Data 1e3 stds from the running mean: the probe's samples run twice (the move), the rest
    of the batch of 32 once, already centred; its moments are exact and later batches need no
    move."""
    runs = _spy_runs(monkeypatch)
    model = conv_bn_model(running_mean=0.0)
    rng = np.random.default_rng(5)
    with OnnxSource(model, path=None).runner() as runner:
        for _ in range(3):
            x = (1e3 + rng.normal(0, 1, (32, 3, 6, 6))).astype(np.float32)
            out, moments = runner.moments(x)
            assert_exact_moments(moments["bn"], bn_input(model, x))
            np.testing.assert_allclose(out, plain_output(model, x), rtol=1e-5, atol=1e-4)
        assert runner.recentres == 1
    probe = onnx_runner.PROBE_SAMPLES
    assert runs == [("moments", probe), ("moments", probe), ("moments", 32 - probe), ("moments", 32), ("moments", 32)]


def test_data_the_running_mean_fits_costs_the_probe_once(monkeypatch):
    runs = _spy_runs(monkeypatch)
    model = conv_bn_model(running_mean=0.0)
    rng = np.random.default_rng(6)
    with OnnxSource(model, path=None).runner() as runner:
        for _ in range(2):
            x = rng.normal(0, 1, (32, 3, 6, 6)).astype(np.float32)
            _, moments = runner.moments(x)
            assert_exact_moments(moments["bn"], bn_input(model, x))
        assert runner.recentres == 0
    probe = onnx_runner.PROBE_SAMPLES
    assert runs == [("moments", probe), ("moments", 32 - probe), ("moments", 32)]


def test_the_probe_counts_and_the_batch_comes_back_in_its_order(monkeypatch):
    """The probe's samples (spread over the batch) run first, yet the outputs and the per-sample
    moments of the first batch are those of its samples in their order (float64 references,
    sample by sample), and no sample runs twice."""
    runs = _spy_runs(monkeypatch)
    model = conv_bn_model(running_mean=0.0)
    x = np.random.default_rng(9).normal(0, 1, (32, 3, 6, 6)).astype(np.float32)
    x += np.arange(32, dtype=np.float32)[:, None, None, None]  # each sample its own level
    with OnnxSource(model, path=None).runner() as runner:
        out, moments, per_sample = runner.sample_moments(x)
    assert sum(n for _, n in runs[-2:]) == 32 and runs[-2][1] == onnx_runner.PROBE_SAMPLES
    assert_exact_moments(moments["bn"], bn_input(model, x))
    np.testing.assert_allclose(out, plain_output(model, x), rtol=1e-5, atol=1e-4)
    reference = bn_input(model, x).astype(np.float64)
    np.testing.assert_allclose(per_sample["bn"].means, reference.mean(axis=(2, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(per_sample["bn"].m2s / 16, reference.var(axis=(2, 3)), rtol=1e-3, atol=1e-5)


def test_small_batches_run_no_probe(monkeypatch):
    runs = _spy_runs(monkeypatch)
    model = conv_bn_model(running_mean=0.0)
    x = np.random.default_rng(7).normal(0, 1, (2 * onnx_runner.PROBE_SAMPLES, 3, 6, 6)).astype(np.float32)
    with OnnxSource(model, path=None).runner() as runner:
        runner.moments(x)
    assert runs == [("moments", len(x))]


def _wide_output_model(classes: int = 4096) -> onnx.ModelProto:
    """x (N, 3, 6, 6) -> Conv -> BN -> Relu -> Flatten -> MatMul (64 -> ``classes``): a sample's
    output is 64 times its BN input, as a recogniser's scores over a large alphabet are."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(4, np.float32), "s"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
        numpy_helper.from_array(np.zeros(4, np.float32), "m"),
        numpy_helper.from_array(np.ones(4, np.float32), "v"),
        numpy_helper.from_array(rng.normal(0, 0.1, (64, classes)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"]),
        helper.make_node("BatchNormalization", ["conv", "s", "b", "m", "v"], ["y"], name="bn"),
        helper.make_node("Relu", ["y"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", classes])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_chunks_hold_at_most_chunk_bytes_of_output_and_change_no_figure(monkeypatch):
    """With room for 5 samples' outputs a chunk, the 28 samples of a batch of 32 left after the
    probe's 4 run as 6 chunks of 4-5 samples (the BN inputs alone would allow 80); the moments
    and outputs are those of the batch run whole."""
    model = _wide_output_model()
    x = np.random.default_rng(8).normal(0, 1, (32, 3, 6, 6)).astype(np.float32)
    with OnnxSource(model, path=None).runner() as runner:
        whole_out, whole = runner.moments(x)
    runs = _spy_runs(monkeypatch)
    monkeypatch.setattr(onnx_runner, "CHUNK_BYTES", 5 * 4 * 4096)
    with OnnxSource(model, path=None).runner() as runner:
        out, moments = runner.moments(x)
    sizes = [n for _, n in runs[1:]]
    assert runs[0] == ("moments", onnx_runner.PROBE_SAMPLES)
    assert sum(sizes) == 32 - onnx_runner.PROBE_SAMPLES and max(sizes) == 5 and min(sizes) == 4
    np.testing.assert_array_equal(out, whole_out)
    np.testing.assert_allclose(moments["bn"].mean, whole["bn"].mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(moments["bn"].var, whole["bn"].var, rtol=1e-9)


def test_a_graph_with_a_fixed_batch_size_runs_no_probe_and_takes_any_number_of_samples(monkeypatch):
    """A graph exported without dynamic axes (batch fixed at 32) runs whole batches of 32 only:
    the probe's 4 samples were refused by onnxruntime, and a last batch of 8 (DATA of 40
    samples) ended the run with exit 2. No probe runs there, and a last partial batch runs as
    parts tiled to 32 (8 samples 4 times; 7 as 4, 2 and 1): the moments of all the samples are
    exact, and the outputs are the plain model's."""
    import bncheck
    from bncheck.commands.drift import DriftOptions

    dynamic = conv_bn_model(running_mean=0.0)
    model = conv_bn_model(running_mean=0.0)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 32
    runs = _spy_runs(monkeypatch)
    rng = np.random.default_rng(7)
    for n in (32, 40, 39, 5):
        x = rng.normal(0, 1, (n, 3, 6, 6)).astype(np.float32)
        runs.clear()
        with OnnxSource(model, path=None).runner() as runner:
            out, moments = runner.moments(x)
            _, _, per_sample = runner.sample_moments(x)
        assert_exact_moments(moments["bn"], bn_input(dynamic, x))
        np.testing.assert_allclose(out, plain_output(dynamic, x), rtol=1e-5, atol=1e-5)
        assert len(per_sample["bn"]) == n
        assert all(size == 32 for _, size in runs), runs
    data = rng.normal(0, 1, (40, 3, 6, 6)).astype(np.float32)
    report = bncheck.drift(model, data, options=DriftOptions(batch_size=32, mismatch_samples=0))
    assert report.to_dict()["data"]["samples"] == 40
