"""bncheck.data.holdout: the split is by position, the same in every pass, the fraction asked,
and the rest is re-cut into full batches with nothing lost or repeated."""

from __future__ import annotations

import numpy as np

from bncheck.data.holdout import HoldoutSplit
from bncheck.data.loader import Batch


def _batches(x, y, size):
    for start in range(0, len(x), size):
        yield Batch(x=x[start : start + size], y=None if y is None else y[start : start + size], index=start)


def test_rest_and_held_partition_the_data_in_every_pass():
    x = np.arange(1000, dtype=np.float32)[:, None]
    y = np.arange(1000)
    split = HoldoutSplit(0.2, keep=1000)
    first = list(split.rest(_batches(x, y, 32), 10))
    second = list(split.rest(_batches(x, y, 32), 10))
    held_x, held_y = split.samples()
    rest = np.concatenate([b.x[:, 0] for b in first])
    assert all(len(b.x) == 10 for b in first[:-1])
    np.testing.assert_array_equal(rest, np.concatenate([b.x[:, 0] for b in second]))
    np.testing.assert_array_equal(np.sort(np.concatenate([rest, held_x[:, 0]])), x[:, 0])
    np.testing.assert_array_equal(held_x[:, 0].astype(int), held_y)
    assert 150 < len(held_x) < 250 and split.held == len(held_x)
    mask = split.held_mask(0, 1000)
    np.testing.assert_array_equal(np.flatnonzero(mask), held_y)


def test_samples_caps_the_rest_and_keep_caps_memory():
    x = np.arange(500, dtype=np.float32)[:, None]
    split = HoldoutSplit(0.5, keep=7)
    rest = list(split.rest(_batches(x, None, 16), 8, samples=100))
    assert sum(len(b.x) for b in rest) == 100
    assert len(split.samples()[0]) == 7
