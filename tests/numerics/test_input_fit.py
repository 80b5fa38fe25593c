"""The fit of the input correction a model's first BN statistics imply, against a float64 torch
convolution: the probes are measured on a conv with zero padding (borders included) over
spatially and channel-correlated data, the targets by convolving the corrected data itself."""

from __future__ import annotations

import numpy as np
import torch

from bncheck.numerics.input_fit import Probes, covariance_from_pairs, fit_correction, predicted


def _conv(x: np.ndarray, weight: torch.Tensor, bias: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    y = torch.nn.functional.conv2d(torch.from_numpy(x), weight, bias, padding=2).numpy()
    return y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3))


def _data(rng) -> np.ndarray:
    low = torch.from_numpy(rng.normal(0, 1, (32, 3, 5, 5)))
    up = torch.nn.functional.interpolate(low, size=(20, 20), mode="bilinear", align_corners=False).numpy()
    return 0.4 + 0.1 * (up + 0.8 * up.mean(axis=1, keepdims=True)) + rng.normal(0, 0.01, up.shape)


def _probes(x, weight, bias) -> Probes:
    mean = x.mean(axis=(0, 2, 3))
    centred = x - mean.reshape(1, 3, 1, 1)
    zero = np.zeros_like(x[:1])
    b, _ = _conv(zero, weight, bias)

    def masked(source, keep):
        out = np.zeros_like(source)
        out[:, list(keep)] = source[:, list(keep)]
        return out

    single = [_conv(masked(centred, [c]), weight, bias) for c in range(3)]
    const = [_conv(masked(np.ones_like(zero), [c]), weight, bias) for c in range(3)]
    pairs = {(i, j): _conv(masked(centred, [i, j]), weight, bias)[1] for i, j in [(0, 1), (0, 2), (1, 2)]}
    borders = {(i, j): _conv(masked(np.ones_like(zero), [i, j]), weight, bias)[1] for i, j in [(0, 1), (0, 2), (1, 2)]}
    cross = np.zeros((len(b), 3, 3))
    for i in range(3):
        for j in range(3):
            var = _conv(masked(centred, [i]) + masked(np.ones_like(zero), [j]), weight, bias)[1]
            cross[:, i, j] = 0.5 * (var - single[i][1] - const[j][1])
    return Probes(
        b, np.stack([m - b for m, _ in single], 1), covariance_from_pairs(np.stack([v for _, v in single], 1), pairs),
        np.stack([m - b for m, _ in const], 1), covariance_from_pairs(np.stack([v for _, v in const], 1), borders), cross,
    )  # fmt: skip


def test_the_fit_recovers_the_mean_and_scale_the_statistics_were_accumulated_under():
    rng = np.random.default_rng(0)
    x = _data(rng)
    weight = torch.from_numpy(rng.normal(0, 0.3, (16, 3, 5, 5)))
    bias = torch.from_numpy(rng.normal(0, 0.1, 16))
    mean = x.mean(axis=(0, 2, 3))
    scale, target = np.array([4.0, 2.5, 3.0]), np.array([0.2, -0.1, 0.05])
    trained_on = scale.reshape(1, 3, 1, 1) * (x - mean.reshape(1, 3, 1, 1)) + target.reshape(1, 3, 1, 1)
    running_mean, running_var = _conv(trained_on, weight, bias)  # what the BN layer stored
    probes = _probes(x, weight, bias)
    predicted_mean, predicted_var = predicted(probes, scale, target)
    np.testing.assert_allclose(predicted_mean, running_mean, atol=1e-9)
    np.testing.assert_allclose(predicted_var, running_var, rtol=1e-9)
    fit = fit_correction(probes, running_mean, running_var, 0.0, mean)
    np.testing.assert_allclose(fit.scale, scale, rtol=1e-6)
    np.testing.assert_allclose(fit.mean, target, atol=1e-6)
    assert fit.var_residual < 1e-8 and fit.mean_residual < 1e-8


def test_without_border_or_correlation_it_is_the_textbook_formula():
    """One input channel, a 1x1 conv: E[y] = w mu + b, Var[y] = w^2 a^2 var(x)."""
    probes = Probes(
        bias=np.array([0.5, -1.0]), contribution=np.zeros((2, 1)), covariance=np.array([[[4.0]], [[0.25]]]),
        response=np.array([[2.0], [-0.5]]), border=np.zeros((2, 1, 1)),
    )  # fmt: skip  (w = (2, -0.5), var(x) = 1)
    running_mean = 0.5 + np.array([2.0, -0.5]) * 3.0 + np.array([0.0, -1.5])
    fit = fit_correction(probes, running_mean, np.array([4.0, 0.25]) * 9.0, 0.0, np.zeros(1))
    np.testing.assert_allclose(fit.scale, [3.0], rtol=1e-6)
    np.testing.assert_allclose(fit.mean, [3.0], atol=1e-6)


def test_the_tied_fit_recovers_one_map_for_all_channels():
    """Statistics accumulated under one affine map ``x' = a x + d`` of every channel (one
    ``--mean``/``--std`` for all of them): the tied fit finds ``a`` and ``d`` (two numbers) and
    matches the stored statistics exactly; the per-channel fit agrees, as it must when the
    channels can be told apart."""
    rng = np.random.default_rng(1)
    x = _data(rng)
    weight = torch.from_numpy(rng.normal(0, 0.3, (16, 3, 5, 5)))
    bias = torch.from_numpy(rng.normal(0, 0.1, 16))
    mean = x.mean(axis=(0, 2, 3))
    a, d = 2.5, -0.7
    running_mean, running_var = _conv(a * x + d, weight, bias)
    probes = _probes(x, weight, bias)
    tied = fit_correction(probes, running_mean, running_var, 0.0, mean, tied=True)
    np.testing.assert_allclose(tied.scale, [a, a, a], rtol=1e-6)
    np.testing.assert_allclose(tied.mean, d + a * mean, atol=1e-6)  # x' = a (x - m) + mu
    assert tied.var_residual < 1e-8 and tied.mean_residual < 1e-8
    own = fit_correction(probes, running_mean, running_var, 0.0, mean)
    np.testing.assert_allclose(own.scale, tied.scale, rtol=1e-5)
    # a map per channel that one map cannot give: the tied fit is left with a residual
    scale = np.array([4.0, 1.0, 2.0])
    running_mean, running_var = _conv(scale.reshape(1, 3, 1, 1) * x, weight, bias)
    assert fit_correction(probes, running_mean, running_var, 0.0, mean, tied=True).var_residual > 1e-3
