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
