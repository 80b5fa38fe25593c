"""Drift metrics against direct computations (numerical integration for the Hellinger score)."""

from __future__ import annotations

import numpy as np
import pytest

from bncheck.numerics import drift as m


def _gauss(x, mu, var):
    return np.exp(-((x - mu) ** 2) / (2 * var)) / np.sqrt(2 * np.pi * var)


@pytest.mark.parametrize(
    "mu,var,rm,rv,eps",
    [(0.0, 1.0, 0.0, 1.0, 1e-5), (0.7, 1.0, 0.0, 1.0, 1e-5), (0.0, 4.0, 0.0, 1.0, 0.0), (2.0, 0.3, -1.0, 2.5, 1e-3)],
)
def test_hellinger_matches_numerical_integration(mu, var, rm, rv, eps):
    z = m.mean_shift(np.array([mu]), np.array([rm]), np.array([rv]), eps)
    r = m.var_log_ratio(np.array([var]), np.array([rv]), eps)
    x = np.linspace(-40, 40, 400_001)
    bc = np.trapezoid(np.sqrt(_gauss(x, mu, var + eps) * _gauss(x, rm, rv + eps)), x)
    assert m.hellinger_sq(z, r)[0] == pytest.approx(1 - bc, abs=1e-9)


def test_identical_statistics_give_zero_drift():
    rng = np.random.default_rng(0)
    rm, rv = rng.normal(size=16), rng.uniform(0.1, 3, size=16)
    d = m.layer_drift(rm, rv, rm, rv, 1e-5, samples=1000, elements=64000)
    assert d.mean_shift.mean == 0 and d.var_log_ratio.mean == 0 and d.score == 0


def test_contract_definitions_and_summary_shape():
    mu = np.array([1.0, 0.0, -3.0])
    var = np.array([1.0, 2.0, 0.5])
    rm = np.array([0.0, 0.0, 0.0])
    rv = np.array([1.0, 1.0, 1.0])
    eps = 1e-5
    d = m.layer_drift(mu, var, rm, rv, eps, samples=10, elements=10)
    z = (mu - rm) / np.sqrt(rv + eps)
    r = np.log((var + eps) / (rv + eps))
    np.testing.assert_allclose(d.z, z, rtol=1e-12)
    np.testing.assert_allclose(d.r, r, rtol=1e-12)
    out = d.to_dict()
    assert out["mean_shift"] == {"mean": pytest.approx(np.mean(np.abs(z))), "max": pytest.approx(3 / np.sqrt(1 + eps)), "channel": 2}
    assert out["var_log_ratio"]["channel"] == 1
    assert 0 < out["score"] < 1


def test_score_grows_with_drift_and_is_bounded():
    scores = [m.hellinger_sq(np.array([z]), np.array([0.0]))[0] for z in (0, 0.5, 1, 3, 30)]
    assert scores == sorted(scores) and scores[-1] <= 1.0 and scores[-1] > 0.99


def test_batch_scatter():
    bm = np.array([[1.0], [-1.0]])
    bv = np.array([[1.0], [1.0]])
    sc = m.batch_scatter(bm, bv, np.array([0.0]), np.array([1.0]), 0.0)
    assert sc["mean_scatter"] == pytest.approx(1.0) and sc["var_scatter"] == 0


def test_half_noise_estimates_the_sampling_noise_of_mean_abs_z():
    """Two halves of n normal samples per channel: the split-half noise level of mean |z| is,
    on average over repeats, what sampling alone gives on all n (sqrt(2/pi)/sqrt(n)), checked
    against a direct simulation of mean |z| with exact statistics."""
    rng = np.random.default_rng(0)
    n, channels, repeats = 64, 32, 400
    noise, direct = [], []
    for _ in range(repeats):
        x = rng.normal(size=(n, channels))
        z_a, z_b = x[: n // 2].mean(0), x[n // 2 :].mean(0)  # running mean 0, var 1
        noise.append(m.half_noise(z_a, z_b, n, n // 2, n // 2))
        direct.append(np.mean(np.abs(x.mean(0))))
    assert np.mean(noise) == pytest.approx(np.mean(direct), rel=0.03)
    assert np.mean(direct) == pytest.approx(np.sqrt(2 / np.pi / n), rel=0.03)


def test_noise_level_never_below_normal_theory():
    d = m.layer_drift(np.zeros(4), np.ones(4), np.zeros(4), np.ones(4), 1e-5, samples=32, elements=32)
    d.z_noise, d.r_noise = 1e-6, 1e-6  # two halves that happen to agree
    z, r = d.noise()
    assert z == pytest.approx(np.sqrt(2 / np.pi) * d.z_se) and r == pytest.approx(np.sqrt(2 / np.pi) * d.r_se)


@pytest.mark.parametrize("size", [1, 2, 7, 10, 1001])
def test_median_is_numpys_without_numpy_ma(size):
    from bncheck.numerics.drift import median

    values = np.random.default_rng(size).standard_normal(size) * 1e3
    assert median(values) == np.median(values)
    assert np.isnan(median(np.append(values, np.nan))) and np.isnan(median(np.array([])))
