"""The engine machinery without Ray: the local engine against the code it wraps, the replay
of the subsample over blocks, blocks and plans, and the promise that the core never imports
Ray or s3fs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bncheck.backends import load_model
from bncheck.data import DataOptions, open_data
from bncheck.data.planning import make_plan
from bncheck.engines import DataSpec, PassRequest, make_engine
from bncheck.engines.blocks import (
    BlockWorker,
    ModelPackage,
    ReplayReservoir,
    merge_blocks,
    pack_model,
)
from bncheck.engines.interface import ModelSpec
from bncheck.engines.measure import measure
from bncheck.errors import UsageError
from bncheck.numerics.reservoir import Reservoir

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
ONNX = SAMPLES / "digits_cnn.onnx"
REFERENCE = SAMPLES / "data" / "digits" / "reference"
ARCH = f"{SAMPLES / 'architectures.py'}:digits_cnn"


@pytest.fixture(scope="module")
def onnx_source():
    return load_model(ONNX)


def names(source) -> list[str]:
    return [layer.name for layer in source.bn_layers()]


# ---------------------------------------------------------------------------- the subsample replay


@pytest.mark.parametrize("size,blocks", [(8, [3, 5, 40, 1, 17]), (256, [96, 96, 96]), (5, [0, 2, 0, 9]), (0, [4, 4])])
def test_replayed_reservoir_keeps_what_the_streaming_one_keeps(size, blocks):
    rng = np.random.default_rng(1)
    stream = rng.normal(size=(sum(blocks), 3)).astype(np.float32)
    outputs = rng.normal(size=(sum(blocks), 2)).astype(np.float32)
    reference = Reservoir(size, seed=7)
    for start in range(0, len(stream), 6):  # the local engine offers batch by batch
        reference.offer(stream[start : start + 6], outputs[start : start + 6])
    replay = ReplayReservoir(size, seed=7)
    start, fetched = 0, 0
    for n in blocks:
        taken = replay.plan(n)
        if taken:
            fetched += 1
            replay.fill(taken, stream[start : start + n], outputs[start : start + n])
        start += n
    want, got = reference.sample(), replay.sample()
    if size == 0:
        assert want == (None, None) and got == (None, None) and fetched == 0
        return
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_replay_fetches_few_blocks_of_a_long_stream():
    replay = ReplayReservoir(16, seed=0)
    fetched = sum(bool(replay.plan(100)) for _ in range(1000))  # 100,000 samples in 1,000 blocks
    assert fetched < 200  # about 16 * ln(100000 / 16) = 140 samples are ever taken


# ---------------------------------------------------------------------------- the local engine


def test_local_engine_is_the_in_process_pass(onnx_source):
    layers = names(onnx_source)
    dataset = open_data(REFERENCE, DataOptions(), expected_shape=onnx_source.input_spec().shape)
    with onnx_source.runner(layers=layers) as runner:
        want = measure(runner, dataset.batches(32), keep=64, keep_predictions=True)
    with make_engine("local").session(onnx_source, DataSpec(str(REFERENCE)), DataOptions(), layers=layers) as session:
        got = session.measure(PassRequest(layers, 32, keep=64, keep_predictions=True))
        assert session.num_samples == 540 and session.describe()["samples"] == 540
    for name in layers:
        np.testing.assert_array_equal(got.moments[name].m2, want.moments[name].m2)
    np.testing.assert_array_equal(got.subsample, want.subsample)
    np.testing.assert_array_equal(got.labels, want.labels)


def test_a_one_shard_plan_reads_what_the_folder_gives(onnx_source):
    layers = names(onnx_source)
    engine = make_engine("local")
    with engine.session(onnx_source, DataSpec(str(REFERENCE)), DataOptions(), layers=layers) as plain:
        want = plain.measure(PassRequest(layers, 32, keep=256, keep_predictions=True))
    with engine.session(onnx_source, DataSpec(str(REFERENCE), shard=(0, 1)), DataOptions(), layers=layers) as planned:
        got = planned.measure(PassRequest(layers, 32, keep=256, keep_predictions=True))
        assert planned.provenance()["ranges"] == [[0, 540]]
    for name in layers:
        np.testing.assert_array_equal(got.moments[name].m2, want.moments[name].m2)
    np.testing.assert_array_equal(got.subsample, want.subsample)
    np.testing.assert_array_equal(got.sub_outputs, want.sub_outputs)


def test_train_pass_merges_batch_statistics_and_skips_single_samples():
    """The first BN layer sees conv1(x) whatever the batch: its population moments (torch as
    the reference) are what a train pass merges; a trailing batch of one sample is skipped."""
    import torch

    from bncheck.numerics.moments import Moments

    source = load_model(SAMPLES / "digits_cnn.pt", arch=ARCH)
    layers = names(source)
    with make_engine("local").session(source, DataSpec(str(REFERENCE)), DataOptions(limit=65), layers=layers) as session:
        result = session.measure(PassRequest(layers, 32, mode="train"))
    assert result.samples == 64  # 32 + 32; the 65th sample alone has no batch statistics
    x, _ = open_data(REFERENCE, DataOptions(limit=65), expected_shape=(1, 8, 8)).collect()
    x = x[:64]  # the 65 files --limit spreads over DATA, the last one left out
    with torch.no_grad():
        features = source.module.conv1(torch.from_numpy(x)).double().numpy()
    want = Moments.of_array(features, channel_axis=1)
    got = result.moments["bn1"]
    assert got.count == want.count == 64 * 64
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.var, want.var, rtol=1e-5)


def test_engine_names_are_checked():
    with pytest.raises(UsageError, match="local, ray"):
        make_engine("spark")
    with pytest.raises(UsageError, match="--engine ray"):
        make_engine("local", address="auto")


# ---------------------------------------------------------------------------- blocks and workers


def test_blocks_of_images_hold_whole_batches(onnx_source):
    plan, _ = make_plan(REFERENCE, DataOptions(), (1, 8, 8), batch_size=32)
    for workers in (1, 2, 3, 8):
        blocks = plan.blocks(workers=workers, batch_size=32)
        assert blocks[0].start == 0 and blocks[-1].stop == 540
        assert all(a.stop == b.start for a, b in zip(blocks, blocks[1:], strict=False))
        assert all((b.stop - b.start) % 32 == 0 for b in blocks[:-1])
        assert len(blocks) >= min(4 * workers, 540 // 32)


def test_a_block_worker_loads_a_shipped_model_and_its_architecture(tmp_path):
    """What a Ray actor does, in this process: the model and --arch travel as bytes."""
    package = pack_model(ModelSpec(SAMPLES / "digits_cnn.pt", ARCH))
    assert isinstance(package, ModelPackage) and any(name.endswith("architectures.py") for name in package.files)
    plan, _ = make_plan(REFERENCE, DataOptions(), (1, 8, 8), batch_size=32)
    worker = BlockWorker(package, plan)
    try:
        layers = [layer.name for layer in worker.source.bn_layers()]
        blocks = plan.blocks(workers=2, batch_size=32)
        results = [worker.run(block, PassRequest(layers, 32)) for block in reversed(blocks)]
    finally:
        worker.close()
    merged = merge_blocks(results)
    local = load_model(SAMPLES / "digits_cnn.pt", arch=ARCH)
    with make_engine("local").session(local, DataSpec(str(REFERENCE)), DataOptions(), layers=layers) as session:
        want = session.measure(PassRequest(layers, 32))
    for name in layers:
        np.testing.assert_allclose(merged[name].mean, want.moments[name].mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(merged[name].m2, want.moments[name].m2, rtol=1e-9)
    assert sum(r.samples for r in results) == 540


# ---------------------------------------------------------------------------- optional dependencies


def test_the_core_imports_neither_ray_nor_s3fs(tmp_path):
    code = f"""
import sys
from typer.testing import CliRunner
from bncheck.cli.app import app
import bncheck, bncheck.engines, bncheck.engines.local, bncheck.report.stats_file, bncheck.data.planning
import bncheck.data.remote
r = CliRunner().invoke(app, ["drift", {str(ONNX)!r}, {str(REFERENCE)!r}, "--shard", "1/2", "--save-stats", {str(tmp_path / 'p.npz')!r}, "-f", "json"])
assert r.exit_code in (0, 1), r.output
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "s3fs", "fsspec", "boto3", "botocore"))
print(bad)
assert not bad, bad
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_train_pass_memory_stays_bounded_and_merges_exactly(monkeypatch):
    """A long train pass holds at most ``_MERGE_EVERY`` per-batch moments per layer and gives
    the float64 moments of everything it saw."""
    import importlib
    from types import SimpleNamespace

    from bncheck.engines.measure import train_pass
    from bncheck.numerics.moments import Moments

    drift_module = importlib.import_module("bncheck.engines.measure")
    monkeypatch.setattr(drift_module, "_MERGE_EVERY", 4)
    rng = np.random.default_rng(7)
    chunks = [rng.normal(k % 5, 1 + k % 3, (8, 3)) for k in range(23)]
    longest = []

    class Runner:
        def train_moments(self, x):
            return None, {"bn": Moments.of_array(x, channel_axis=1)}

    real_add = drift_module.add_bounded

    def spy(parts, moments):
        real_add(parts, moments)
        longest.append(max(len(v) for v in parts.values()))

    monkeypatch.setattr(drift_module, "add_bounded", spy)
    batches = [SimpleNamespace(x=c) for c in chunks] + [SimpleNamespace(x=chunks[0][:1])]
    result = train_pass(Runner(), batches, ["bn"])
    assert max(longest) <= 4 and result.samples == 23 * 8
    want = Moments.of_array(np.concatenate(chunks), channel_axis=1)
    np.testing.assert_allclose(result.moments["bn"].mean, want.mean, rtol=1e-12)
    np.testing.assert_allclose(result.moments["bn"].m2, want.m2, rtol=1e-12)
