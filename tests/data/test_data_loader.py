"""Streaming: batch boundaries, worker counts, limit, NaN policies, bounded memory, stopping
early, errors from the decoding threads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bncheck.data import DataOptions, ImageOptions, open_data
from bncheck.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "sample_models" / "data" / "digits" / "reference"


def batches(path, batch_size, expected=None, **options):
    dataset = open_data(path, DataOptions(**options), expected_shape=expected)
    return dataset, list(dataset.batches(batch_size))


def joined(parts):
    x = np.concatenate([b.x for b in parts])
    y = np.concatenate([b.y for b in parts]) if parts[0].y is not None else None
    return x, y


@pytest.fixture(scope="module")
def mixed_arrays(tmp_path_factory) -> Path:
    """Several files of uneven sizes with NaN rows, so batches straddle files and exclusions."""
    folder = tmp_path_factory.mktemp("arrays")
    rng = np.random.default_rng(0)
    for i, n in enumerate([5, 1, 13, 40, 2]):
        x = rng.normal(size=(n, 3, 2)).astype(np.float32)
        if n > 3:
            x[1, 0, 0] = np.nan
            x[-1, 2, 1] = np.inf
        np.save(folder / f"{i}.npy", x)
    return folder


@pytest.mark.parametrize("path_name", ["digits", "arrays"])
def test_batch_size_changes_only_the_boundaries(path_name, mixed_arrays):
    path = DIGITS if path_name == "digits" else mixed_arrays
    expected = (1, 8, 8) if path_name == "digits" else None
    results = {}
    for size in (1, 7, 32):
        dataset, parts = batches(path, size, expected, workers=2)
        assert all(len(b) == size for b in parts[:-1]) and 1 <= len(parts[-1]) <= size
        assert [b.index for b in parts] == list(range(0, sum(map(len, parts)), size))
        results[size] = joined(parts)
    for size in (7, 32):
        np.testing.assert_array_equal(results[size][0], results[1][0])
        if results[1][1] is not None:
            np.testing.assert_array_equal(results[size][1], results[1][1])
    assert len(results[1][0]) == (540 if path_name == "digits" else 61 - 6)


def test_worker_counts_give_identical_batches(mixed_arrays):
    reference = None
    for workers in (0, 1, 4):
        dataset, parts = batches(DIGITS, 32, (1, 8, 8), workers=workers)
        x, y = joined(parts)
        if reference is None:
            reference = (x, y)
        np.testing.assert_array_equal(x, reference[0])
        np.testing.assert_array_equal(y, reference[1])
        dataset, parts = batches(mixed_arrays, 5, None, workers=workers)
        assert dataset.issues.nonfinite == 6


def test_limit_below_and_above_the_data(mixed_arrays):
    dataset, parts = batches(DIGITS, 32, (1, 8, 8), limit=50)
    x, y = joined(parts)
    full, full_y = open_data(DIGITS, DataOptions(), expected_shape=(1, 8, 8)).collect()
    # one-sample files: 50 files spread over the 540 sorted ones (the middle of each run of 10.8)
    chosen = [(2 * i + 1) * 540 // 100 for i in range(50)]
    np.testing.assert_array_equal(x, full[chosen])
    np.testing.assert_array_equal(y, full_y[chosen])
    assert sorted(set(y.tolist())) == list(range(10))  # every class folder, not class 0 only
    assert [len(b) for b in parts] == [32, 18]
    described = dataset.describe()
    assert dataset.num_samples == 50 and described["samples"] == 50
    assert described["samples_available"] == 540 and described["limit_spread"] == {"files": 50, "of": 540}
    dataset, parts = batches(DIGITS, 32, (1, 8, 8), limit=10_000)
    described = dataset.describe()
    assert described["samples"] == 540 < described["limit"] == 10_000
    # the limit counts usable samples: excluded NaN rows do not use it up
    dataset, parts = batches(mixed_arrays, 4, None, limit=20, workers=0)
    # 0.npy: 3 usable of 5, 1.npy: 1, 2.npy: 11 of 13, 3.npy: the first 5 usable of rows 0-5
    assert sum(map(len, parts)) == 20 and dataset.issues.nonfinite == 5


def test_spread_files_takes_the_middle_of_equal_runs():
    from bncheck.data.dataset import spread_files

    assert spread_files(10, None) is None and spread_files(10, 10) is None and spread_files(10, 20) is None
    assert spread_files(10, 2) == [2, 7] and spread_files(10, 5) == [1, 3, 5, 7, 9] and spread_files(3, 1) == [1]
    for count, limit in [(540, 50), (1000, 999), (7, 3), (12_000, 256)]:
        chosen = spread_files(count, limit)
        assert len(set(chosen)) == limit == len(chosen) and chosen == sorted(chosen) and 0 <= chosen[0] and chosen[-1] < count
        gaps = np.diff(chosen)  # evenly spread, half a run left at each end
        assert gaps.max() - gaps.min() <= 1 and abs(chosen[0] - (count - 1 - chosen[-1])) <= 1


def test_limit_on_a_labels_file_keeps_each_file_with_its_label(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(20):
        Image.fromarray(np.full((4, 4), 10 * k, np.uint8)).save(tmp_path / f"{k:02d}.png")
    labels = tmp_path.parent / f"{tmp_path.name}-labels.csv"
    values = rng.integers(0, 5, 20)
    labels.write_text("".join(f"{v}\n" for v in values))
    dataset, parts = batches(tmp_path, 8, (1, 4, 4), limit=4, labels=str(labels))
    x, y = joined(parts)
    chosen = [2, 7, 12, 17]
    np.testing.assert_allclose(x[:, 0, 0, 0], [10 * k / 255 for k in chosen], rtol=1e-6)
    np.testing.assert_array_equal(y, values[chosen])
    assert dataset.describe()["limit_spread"] == {"files": 4, "of": 20}


def test_nan_policies(mixed_arrays):
    dataset, parts = batches(mixed_arrays, 8, None)
    x, _ = joined(parts)
    assert np.isfinite(x).all() and len(x) == 55
    described = dataset.describe()
    assert described["nonfinite_samples"] == 6 and described["nonfinite_policy"] == "exclude"
    assert described["nonfinite_examples"][0] == f"sample 1 (row 1 of {mixed_arrays / '0.npy'})"
    dataset, parts = batches(mixed_arrays, 8, None, nan="keep")
    x, _ = joined(parts)
    assert len(x) == 61 and (~np.isfinite(x)).any(axis=(1, 2)).sum() == 6
    assert dataset.describe()["nonfinite_samples"] == 6
    with pytest.raises(DataError, match=r"sample 1 \(row 1 of .*0\.npy\) contains NaN or Inf; .*--nan exclude"):
        batches(mixed_arrays, 8, None, nan="fail")


def test_all_samples_excluded_is_an_error(tmp_path):
    np.save(tmp_path / "x.npy", np.full((4, 2), np.nan))
    with pytest.raises(DataError, match=r"no usable samples: 4 sample\(s\) with NaN or Inf were excluded"):
        open_data(tmp_path / "x.npy", DataOptions()).collect()


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    pixels = np.random.default_rng(0).integers(0, 256, size=(5000, 4, 4), dtype=np.uint8)
    for i in range(5000):
        Image.fromarray(pixels[i]).save(folder / f"{i:05d}.png", compress_level=0)
    return folder


def test_memory_stays_bounded_with_a_slow_consumer(many_images):
    """5,000 images, a consumer that stalls: the decoded-but-unconsumed samples never exceed
    the window plus the queue, however far the producer could run ahead."""
    batch_size, workers, prefetch = 16, 4, 2
    options = DataOptions(batch_size=batch_size, workers=workers, prefetch=prefetch)
    dataset = open_data(many_images, options)
    seen = 0
    for i, batch in enumerate(dataset.batches()):
        if i in (0, 50):
            time.sleep(0.3)  # the producer fills everything it is allowed to
        seen += len(batch)
    stats = dataset.stream_stats
    window = max(2 * batch_size, workers)
    bound = window + (prefetch + 2) * batch_size
    assert seen == 5000 and stats.batches == 5000 // batch_size + 1
    assert stats.max_queued_batches == prefetch  # it did fill the queue while we slept
    assert stats.max_pending_tasks <= window
    assert 0 < stats.max_live_samples <= bound, (stats.max_live_samples, bound)
    assert stats.live_samples == 0


def test_stopping_early_stops_the_threads(many_images):
    before = {t.ident for t in threading.enumerate()}
    dataset = open_data(many_images, DataOptions(batch_size=8, workers=3))
    iterator = dataset.batches()
    first = next(iterator)
    assert len(first) == 8
    iterator.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("bncheck")]
        if not extra:
            break
        time.sleep(0.02)
    assert not extra, extra
    assert not dataset.issues.complete


def test_breaking_out_of_a_for_loop_then_a_new_pass(tmp_path):
    for i in range(30):
        Image.fromarray(np.full((2, 2), i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    dataset = open_data(tmp_path, DataOptions(batch_size=4, workers=2))
    for _ in dataset.batches():
        break
    x, _ = dataset.collect(batch_size=4)
    assert len(x) == 30 and dataset.describe()["samples"] == 30
    np.testing.assert_array_equal(x[:, 0, 0, 0] * 255, np.arange(30, dtype=np.float32))


def test_error_in_a_worker_reaches_the_caller(tmp_path):
    for i in range(20):
        Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / f"{i:02d}.png")
    Image.fromarray(np.zeros((4, 3), np.uint8)).save(tmp_path / "15.png")
    dataset = open_data(tmp_path, DataOptions(batch_size=4, workers=3))
    got = []
    with pytest.raises(DataError, match=r"15\.png is 4x3"):
        for batch in dataset.batches():
            got.append(batch)
    assert sum(map(len, got)) <= 15


def test_batch_size_option_and_argument():
    dataset = open_data(DIGITS, DataOptions(batch_size=100, limit=250), expected_shape=(1, 8, 8))
    assert [len(b) for b in dataset.batches()] == [100, 100, 50]
    assert [len(b) for b in dataset.batches(200)] == [200, 50]
    with pytest.raises(DataError, match="batch size must be at least 1"):
        dataset.batches(0)


def test_batches_are_float32_contiguous_and_owned(tmp_path):
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    np.save(tmp_path / "x.npy", x)
    dataset = open_data(tmp_path / "x.npy", DataOptions(images=ImageOptions(), workers=0))
    parts = list(dataset.batches(3))
    for batch in parts:
        assert batch.x.dtype == np.float32 and batch.x.flags.c_contiguous and batch.x.flags.owndata
        assert batch.y is None
    np.testing.assert_array_equal(np.concatenate([b.x for b in parts]), x)
