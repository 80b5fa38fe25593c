"""`--shard K/N`, `bncheck merge` and `drift --stats` through the real CLI, against a
one-process run on the same files (the sample digits CNN and its PNG folders)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.statistics_match import assert_statistics_match
from typer.testing import CliRunner

from bncheck.cli.app import app
from bncheck.data.shards import parse_shard, shard_range
from bncheck.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
ONNX = SAMPLES / "digits_cnn.onnx"
STATE_DICT = SAMPLES / "digits_cnn.pt"
ARCH = f"{SAMPLES / 'architectures.py'}:digits_cnn"
SHIFTED = SAMPLES / "data" / "digits" / "shifted"
REFERENCE_NPZ = SAMPLES / "data" / "digits" / "reference.npz"
FIELDS = ("data_count", "data_mean", "data_var", "data_m2", "running_mean", "running_var")


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files if k != "__meta__"}


def meta(path: Path) -> dict:
    with np.load(path) as archive:
        return json.loads(str(archive["__meta__"]))


def make_parts(tmp_path: Path, n: int, data: Path = SHIFTED, *extra) -> list[Path]:
    parts = []
    for k in range(1, n + 1):
        part = tmp_path / f"part{k}.npz"
        result = run("drift", ONNX, data, "--shard", f"{k}/{n}", "--save-stats", part, "-f", "json", "--mismatch-samples", "0", *extra)
        assert result.exit_code in (0, 1), result.output
        parts.append(part)
    return parts


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one")
    stats = folder / "all.npz"
    result = run("drift", ONNX, SHIFTED, "--save-stats", stats, "-f", "json", "--mismatch-samples", "0")
    assert result.exit_code == 1, result.output  # the shifted digits drift
    return stats, json.loads(result.stdout)


# ---------------------------------------------------------------------------- shard selection


def test_shards_partition_the_files_for_any_count_and_alignment():
    for files, n, align in itertools.product([1, 5, 31, 32, 33, 540, 1000], [1, 2, 3, 7, 32], [1, 8, 32]):
        if n > files:
            continue
        ranges = [shard_range(files, (k, n), align) for k in range(n)]
        assert [r.start for r in ranges] == [0] + [r.stop for r in ranges[:-1]]  # contiguous, in order
        assert ranges[-1].stop == files
        assert all(len(r) > 0 for r in ranges), (files, n, align)


def test_shard_boundaries_fall_on_batches_when_every_shard_gets_one():
    assert [tuple(shard_range(540, (k, 3), 32)) [:1] for k in range(3)] == [(0,), (160,), (352,)]
    assert all(shard_range(540, (k, 3), 32).start % 32 == 0 for k in range(3))
    # 40 shards of 540 files cannot all get a batch of 32: boundaries fall on files
    assert len(shard_range(540, (0, 40), 32)) in (13, 14)


def test_shard_option_is_parsed_one_based():
    assert parse_shard("3/8") == (2, 8)
    assert parse_shard(None) is None
    for bad in ("0/8", "9/8", "3", "a/b", "1/0"):
        with pytest.raises(UsageError, match="K/N"):
            parse_shard(bad)


# ---------------------------------------------------------------------------- shard + merge = one run


def test_shards_merged_equal_one_run_to_float64_rounding(tmp_path, one_run):
    stats, _ = one_run
    parts = make_parts(tmp_path, 3)
    merged = tmp_path / "merged.npz"
    result = run("merge", *parts, "--out", merged)
    assert result.exit_code == 0, result.output
    assert "540 samples from 540 of 540 files" in result.stdout
    assert_statistics_match(arrays(merged), arrays(stats))
    info = meta(merged)
    assert info["samples"] == 540 and info["ranges"] == [[0, 540]] and info["shards"] == [0, 1, 2] and info["parts"] == 3


def test_shards_of_array_files_merge_to_one_run(tmp_path):
    """Files of several samples: shard boundaries cannot follow the batches of a one-process
    run, so the runtime's float32 batch reductions round differently (relative 1e-7)."""
    data = tmp_path / "arrays"
    data.mkdir()
    with np.load(REFERENCE_NPZ) as archive:
        x = archive["x"]
    for i, start in enumerate(range(0, 540, 45)):
        np.save(data / f"batch{i:02d}.npy", x[start : start + 45])
    whole = tmp_path / "whole.npz"
    assert run("drift", ONNX, data, "--save-stats", whole, "-f", "json", "--mismatch-samples", "0").exit_code in (0, 1)
    parts = make_parts(tmp_path, 4, data)
    merged = tmp_path / "merged.npz"
    assert run("merge", *parts, "--out", merged).exit_code == 0
    a, b = arrays(whole), arrays(merged)
    assert {k for k in b if "/even_" in k or "/odd_" in k} == {k for k in a if "/even_" in k or "/odd_" in k} != set()
    for key in (k for k in a if "/even_" not in k and "/odd_" not in k):  # float32 rounding relative to the size of the values
        # (the even/odd batches of a shard of 45-sample files are not the one-process run's)
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-6 * float(np.abs(a[key]).max()), err_msg=key)
    assert int(b["/bn1/BatchNormalization/data_count"]) == 540 * 8 * 8  # samples x positions


def test_parts_in_any_order_merge_to_the_same_bits(tmp_path):
    parts = make_parts(tmp_path, 3)
    outputs = []
    for i, order in enumerate(itertools.permutations(parts)):
        out = tmp_path / f"m{i}.npz"
        assert run("merge", *order, "--out", out).exit_code == 0
        outputs.append(out)
    first = arrays(outputs[0])
    for out in outputs[1:]:
        other = arrays(out)
        assert all(np.array_equal(first[k], other[k]) for k in first)
        assert meta(out) == meta(outputs[0])


def test_a_partial_merge_merges_again_with_the_rest(tmp_path, one_run):
    stats, _ = one_run
    parts = make_parts(tmp_path, 4)
    refused = run("merge", parts[0], parts[2], "--out", tmp_path / "half.npz")
    assert refused.exit_code == 2 and "uncovered" in refused.output and "--partial" in refused.output
    assert not (tmp_path / "half.npz").exists()
    assert run("merge", parts[0], parts[2], "--partial", "--out", tmp_path / "half.npz").exit_code == 0
    assert run("merge", parts[3], tmp_path / "half.npz", parts[1], "--out", tmp_path / "all.npz").exit_code == 0
    assert_statistics_match(arrays(tmp_path / "all.npz"), arrays(stats))


# ---------------------------------------------------------------------------- refusals


def test_parts_of_another_model_are_refused(tmp_path):
    parts = make_parts(tmp_path, 2)
    other = tmp_path / "other.npz"
    result = run("drift", STATE_DICT, SHIFTED, "--arch", ARCH, "--shard", "2/2", "--save-stats", other, "-f", "json", "--mismatch-samples", "0")
    assert result.exit_code in (0, 1), result.output
    refused = run("merge", parts[0], other, "--out", tmp_path / "m.npz")
    assert refused.exit_code == 2
    assert "different model" in refused.output and "other.npz" in refused.output
    assert not (tmp_path / "m.npz").exists()


def test_parts_with_other_preprocessing_are_refused_naming_the_option(tmp_path):
    parts = make_parts(tmp_path, 2)
    other = tmp_path / "scaled.npz"
    result = run("drift", ONNX, SHIFTED, "--shard", "2/2", "--scale", "1/128", "--save-stats", other, "-f", "json", "--mismatch-samples", "0")
    assert result.exit_code in (0, 1), result.output
    refused = run("merge", parts[0], other, "--out", tmp_path / "m.npz")
    assert refused.exit_code == 2
    assert "preprocessing" in refused.output and "preprocessing.scale" in refused.output


def test_parts_of_a_changed_listing_are_refused(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(SHIFTED, copy)
    first = make_parts(tmp_path, 2, copy)[0]
    next(iter(sorted((copy / "9").iterdir()))).unlink()  # a file disappears between the two jobs
    second = tmp_path / "late.npz"
    assert run("drift", ONNX, copy, "--shard", "2/2", "--save-stats", second, "-f", "json", "--mismatch-samples", "0").exit_code in (0, 1)
    refused = run("merge", first, second, "--out", tmp_path / "m.npz")
    assert refused.exit_code == 2 and "different listing" in refused.output


def test_overlapping_parts_and_bad_files_are_refused(tmp_path):
    parts = make_parts(tmp_path, 2)
    twice = run("merge", parts[0], parts[0], parts[1], "--out", tmp_path / "m.npz")
    assert twice.exit_code == 2 and "both cover files" in twice.output
    junk = tmp_path / "junk.npz"
    np.savez(junk, a=np.zeros(3))
    foreign = run("merge", parts[0], junk, "--out", tmp_path / "m.npz")
    assert foreign.exit_code == 2 and "junk.npz" in foreign.output
    onto_part = run("merge", parts[0], parts[1], "--out", parts[1])
    assert onto_part.exit_code == 2 and "is one of the parts" in onto_part.output
    assert run("merge", *parts, "--out", tmp_path / "m.npz").exit_code == 0
    again = run("merge", *parts, "--out", tmp_path / "m.npz")
    assert again.exit_code == 2 and "--force" in again.output
    assert run("merge", *parts, "--out", tmp_path / "m.npz", "--force").exit_code == 0
    for result in (run("drift", ONNX, SHIFTED, "--shard", "1/3", "--limit", "10"), run("drift", ONNX, SHIFTED, "--shard", "1/999")):
        assert result.exit_code == 2 and "Traceback" not in result.output


# ---------------------------------------------------------------------------- drift --stats


def test_drift_from_merged_stats_equals_the_data_run(tmp_path, one_run):
    _, report = one_run
    parts = make_parts(tmp_path, 3)
    merged = tmp_path / "merged.npz"
    assert run("merge", *parts, "--out", merged).exit_code == 0
    result = run("drift", ONNX, "--stats", merged, "-f", "json")
    assert result.exit_code == 1, result.output
    body = json.loads(result.stdout)
    needs_data = {"BN103", "BN201", "BN301"}  # the input diagnosis and the train-mode passes (see the note)
    assert not needs_data & {f["rule"] for f in body["findings"]}
    assert [(f["rule"], f["severity"], f["layer"]) for f in body["findings"]] == [
        (f["rule"], f["severity"], f["layer"]) for f in report["findings"] if f["rule"] not in needs_data
    ]
    for got, want in zip(body["layers"], report["layers"], strict=True):
        for key in ("mean_shift", "var_log_ratio"):
            for stat in ("mean", "max"):
                assert got["drift"][key][stat] == pytest.approx(want["drift"][key][stat], rel=1e-5, abs=1e-6)
            # BN101/BN102's noise level: the merged even/odd batches are the data run's halves
            assert got["drift"]["noise"][key] == pytest.approx(want["drift"]["noise"][key], rel=1e-5, abs=1e-6)
        assert got["drift"]["score"] == pytest.approx(want["drift"]["score"], rel=1e-5, abs=1e-6)
    assert body["data"]["samples"] == 540 and body["data"]["path"] == str(SHIFTED)
    assert any("BN201/BN301" in note for note in body.get("notes", [])), body.get("notes")
    assert body["drift"]["small_batch"] is None and body["drift"]["train_eval"] is None


def test_drift_stats_needs_its_own_model_and_no_data(tmp_path, one_run):
    stats, _ = one_run
    other_model = run("drift", STATE_DICT, "--arch", ARCH, "--stats", stats)
    assert other_model.exit_code == 2 and "another model" in other_model.output
    both = run("drift", ONNX, SHIFTED, "--stats", stats)
    assert both.exit_code == 2 and "not both" in both.output
    neither = run("drift", ONNX)
    assert neither.exit_code == 2 and "DATA" in neither.output
