"""The error figures and the pass criterion of fold verification (bncheck.numerics.verify)."""

from __future__ import annotations

import numpy as np
import pytest

from bncheck.numerics.verify import ErrorAccumulator, default_tolerances, interleaved_timing


def test_errors_accumulate_over_batches_per_output():
    acc = ErrorAccumulator()
    acc.add([np.array([1.0, -4.0]), np.array([100.0])], [np.array([1.0, -4.001]), np.array([100.0])])
    acc.add([np.array([2.0, 0.5]), np.array([-200.0])], [np.array([2.0, 0.5]), np.array([-200.02])])
    assert acc.max_abs() == pytest.approx(0.02)
    # relative to the largest |reference| of the same output: 0.001/4 and 0.02/200
    assert acc.max_rel() == pytest.approx(max(0.001 / 4, 0.02 / 200))
    assert acc.passed(atol=0.0, rtol=3e-4)
    assert not acc.passed(atol=0.0, rtol=2e-4)
    assert acc.passed(atol=0.021, rtol=0.0)


def test_relative_error_is_not_elementwise():
    acc = ErrorAccumulator()
    acc.add([np.array([1e-9, 10.0])], [np.array([2e-9, 10.0])])  # elementwise it would be 100%
    assert acc.max_rel() == pytest.approx(1e-10)


def test_nan_in_the_same_place_is_equal_elsewhere_infinite():
    same = ErrorAccumulator()
    same.add([np.array([np.nan, 1.0])], [np.array([np.nan, 1.0])])
    assert same.max_abs() == 0.0 and same.passed(1e-4, 1e-4)
    other = ErrorAccumulator()
    other.add([np.array([1.0, 1.0])], [np.array([np.nan, 1.0])])
    assert other.max_abs() == float("inf") and not other.passed(1e-4, 1e-4)


def test_shape_or_count_mismatch_fails():
    acc = ErrorAccumulator()
    acc.add([np.zeros((2, 3))], [np.zeros((3, 2))])
    assert not acc.passed(1.0, 1.0) and "shape" in acc.mismatch
    acc = ErrorAccumulator()
    acc.add([np.zeros(2)], [np.zeros(2), np.zeros(2)])
    assert not acc.passed(1.0, 1.0) and "2 outputs" in acc.mismatch


def test_default_tolerances_follow_the_dtype():
    assert default_tolerances("float32") == (1e-4, 1e-4)
    assert default_tolerances("float16") == (1e-2, 1e-2)


def test_interleaved_timing_ratio():
    import time

    result = interleaved_timing(lambda: time.sleep(0.004), lambda: time.sleep(0.001), budget_s=0.1, min_rounds=4)
    assert result["rounds"] >= 4
    assert result["first_ms"] > result["second_ms"]
    assert result["ratio"] == pytest.approx(result["first_ms"] / result["second_ms"])


def test_interleaved_timing_of_a_slow_pair_measures_one_round():
    """Three rounds would take more than four times the budget: one round, not min_rounds."""
    import time

    calls = []
    result = interleaved_timing(lambda: (calls.append(1), time.sleep(0.05)), lambda: time.sleep(0.05), budget_s=0.02, min_rounds=3)
    assert result["rounds"] == 1 and len(calls) == 3  # two warm-up calls, one measured
    fast = interleaved_timing(lambda: None, lambda: None, budget_s=0.02, min_rounds=3)
    assert fast["rounds"] >= 3
