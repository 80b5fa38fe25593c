"""bncheck.numerics.recalibration against closed forms: the prior blend (Schneider et al. 2020,
eq. 3), normal-theory interval half-widths for i.i.d. normal data, and McNemar's statistic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bncheck.numerics.moments import Moments
from bncheck.numerics.recalibration import (
    Z95,
    PrecisionTracker,
    blend,
    fewest_flagged,
    paired_worse,
    relative_change,
)


def test_blend_is_the_convex_combination_with_weights_n_and_N():
    stored = (np.array([0.0, 1.0]), np.array([1.0, 4.0]))
    measured = (np.array([2.0, -1.0]), np.array([3.0, 2.0]))
    mean, var = blend(stored, measured, prior=16, samples=48)
    np.testing.assert_allclose(mean, (16 * stored[0] + 48 * measured[0]) / 64)
    np.testing.assert_allclose(var, (16 * stored[1] + 48 * measured[1]) / 64)
    same = blend(stored, measured, prior=0, samples=48)
    np.testing.assert_array_equal(same[0], measured[0])
    np.testing.assert_array_equal(same[1], measured[1])


def test_relative_change_is_per_channel_in_standard_deviations_and_relative_variance():
    old = (np.array([0.0, 0.0]), np.array([4.0, 1.0]))
    new = (np.array([0.02, 0.0]), np.array([4.0, 1.003]))
    assert relative_change(old, new, eps=0.0) == pytest.approx(max(0.02 / 2.0, 0.003 / 1.003))


def _feed(tracker, x: np.ndarray, batch: int) -> None:
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        flat = chunk.reshape(len(chunk), chunk.shape[1], -1).transpose(1, 0, 2).reshape(chunk.shape[1], -1)
        count = flat.shape[1]
        mean = flat.mean(1)
        tracker.add({"bn": Moments(count, mean, ((flat - mean[:, None]) ** 2).sum(1))}, len(chunk))


def test_precision_of_iid_normal_data_is_the_normal_theory_half_width():
    rng = np.random.default_rng(0)
    x = rng.normal([1.0, -2.0, 5.0], [0.5, 2.0, 3.0], size=(8192, 3))
    tracker = PrecisionTracker(None, eps={"bn": 0.0})
    _feed(tracker, x, 64)
    reached = tracker.reached()
    # the batch-means scatter of i.i.d. data estimates 1/sqrt(n) and sqrt(2/n) (to its own noise)
    assert reached["mean"] == pytest.approx(Z95 / math.sqrt(8192), rel=0.25)
    assert reached["variance"] == pytest.approx(Z95 * math.sqrt(2 / 8192), rel=0.25)


def test_precision_counts_correlated_elements_as_one_sample():
    """Every element of a sample equal (a constant image): 64 elements carry the information of
    one, which the batch-means scatter sees and the element count does not."""
    rng = np.random.default_rng(1)
    x = np.repeat(rng.normal(0.0, 1.0, size=(4096, 2, 1)), 64, axis=2)
    tracker = PrecisionTracker(None, eps={"bn": 0.0})
    _feed(tracker, x, 64)
    assert tracker.reached()["mean"] == pytest.approx(Z95 / math.sqrt(4096), rel=0.25)
    assert tracker.reached()["mean"] > 5 * Z95 / math.sqrt(4096 * 64)


def test_tracker_is_done_only_after_min_batches_and_under_tolerance():
    rng = np.random.default_rng(2)
    tracker = PrecisionTracker(0.2, eps={"bn": 0.0}, min_batches=10)
    _feed(tracker, rng.normal(size=(9 * 64, 2)), 64)
    assert not tracker.done  # 9 batches: precise enough, but too few batches to trust
    _feed(tracker, rng.normal(size=(64, 2)), 64)
    assert tracker.done


def test_paired_worse_matches_mcnemar():
    # b = 5 samples only the old model got right, c = 25 only the new one... reversed: worse
    before = np.array([0] * 25 + [1] * 5 + [0] * 170, float)  # 0: correct
    after = np.array([1] * 25 + [0] * 5 + [0] * 170, float)
    test = paired_worse(before, after)
    mcnemar = (25 - 5) / math.sqrt(25 + 5)  # McNemar's z (normal approximation, no continuity)
    # the paired statistic differs from it by the variance's (c - b)^2 / n term only: 3% here
    assert test["difference"] / test["standard_error"] == pytest.approx(mcnemar, rel=0.05)
    paired_t = (20 / 200) / math.sqrt(((25 + 5) / 200 - (20 / 200) ** 2) * 200 / 199 / 200)
    assert test["difference"] / test["standard_error"] == pytest.approx(paired_t, rel=1e-9)
    assert test["worse"]
    assert not paired_worse(after, before)["worse"]  # better is never worse
    small = paired_worse(np.array([0] * 4 + [1] * 3 + [0] * 193, float), np.array([1] * 4 + [0] * 3 + [0] * 193, float))
    assert not small["worse"]  # 4 against 3: noise


@pytest.mark.parametrize("n", [2, 3, 5, 10, 39, 40, 55, 512])
def test_fewest_flagged_is_the_smallest_harm_the_paired_test_flags(n):
    k = fewest_flagged(n)
    before = np.zeros(n)
    worse_k, worse_fewer = before.copy(), before.copy()
    worse_k[:k], worse_fewer[: k - 1] = 1.0, 1.0  # k (or k-1) samples newly wrong, none fixed
    assert paired_worse(before, worse_k)["worse"] and not paired_worse(before, worse_fewer)["worse"]
    assert fewest_flagged(1) is None and not paired_worse(np.zeros(1), np.ones(1))["worse"]
