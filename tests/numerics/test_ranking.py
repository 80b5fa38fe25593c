"""The ranking score's noise level against a Monte Carlo of what sampling alone gives."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bncheck.numerics import drift as metrics
from bncheck.numerics.ranking import distinguishable, fit_noise, fit_score, layer_noise_score


@pytest.mark.parametrize("n", [32, 256, 2048])
def test_noise_level_matches_the_score_sampling_alone_gives(n):
    """Channels whose stored statistics are their population's: the mean squared Hellinger
    distance of n-sample estimates (the closed form and by numerical integration) is what the
    noise level predicts from mean |z| and mean |r|, within 10%."""
    rng = np.random.default_rng(n)
    channels = 2000
    x = rng.normal(0.0, 1.0, (channels, n))
    mu, var = x.mean(axis=1), x.var(axis=1)
    z = metrics.mean_shift(mu, np.zeros(channels), np.ones(channels), 0.0)
    r = metrics.var_log_ratio(var, np.ones(channels), 0.0)
    t = np.linspace(-12, 12, 20001)
    p = np.exp(-(t**2) / 2) / math.sqrt(2 * math.pi)
    some = slice(0, 200)
    q = np.exp(-((t[None, :] - mu[some, None]) ** 2) / (2 * var[some, None])) / np.sqrt(2 * math.pi * var[some, None])
    integrated = 1.0 - np.trapezoid(np.sqrt(p[None, :] * q), t, axis=1)
    np.testing.assert_allclose(metrics.hellinger_sq(z[some], r[some]), integrated, rtol=1e-6, atol=1e-9)
    observed = float(np.mean(metrics.hellinger_sq(z, r)))
    predicted = layer_noise_score(float(np.mean(np.abs(z))), float(np.mean(np.abs(r))))
    assert predicted == pytest.approx(observed, rel=0.1)
    # and from the analytic standard errors the drift rules use (sqrt(2/pi) x SE), about 1/(4n)
    z_se, r_se = metrics.uncertainty(var, np.ones(channels), 0.0, n)
    assert layer_noise_score(math.sqrt(2 / math.pi) * z_se, math.sqrt(2 / math.pi) * r_se) == pytest.approx(observed, rel=0.15)


def test_fit_score_is_the_mean_of_the_finite_layer_scores():
    assert fit_score([0.1, 0.3, float("nan"), None]) == pytest.approx(0.2)
    assert math.isnan(fit_score([]))
    assert fit_noise([(0.1, 0.2), (0.0, float("nan"))]) == pytest.approx(((math.pi / 2) * (0.01 / 8 + 0.04 / 16)) / 2)


def test_scores_closer_than_the_larger_noise_level_are_not_told_apart():
    assert distinguishable(0.010, 0.020, 0.002, 0.004)
    assert not distinguishable(0.010, 0.013, 0.002, 0.004)
    assert distinguishable(0.01, float("nan"), 0.002, 0.002)
