"""What input a model expects, from the stored statistics of the BN layer nearest its input.

When the network from the input ``x`` (C channels) to the first BN input ``y`` (O channels) is
affine (a convolution, padding, an in-graph normalisation), a per-channel correction of the
input ``x'_c = a_c (x_c - m_c) + mu_c`` (``m``: DATA's channel means, ``mu``: the mean the
model expects, ``a``: a scale) gives::

    y'_o      = b_o + sum_c a_c u_oc + sum_c mu_c v_oc
    E[y'_o]   = b_o + sum_c a_c E[u_oc] + sum_c mu_c A_oc
    Var[y'_o] = a^T K_o a + mu^T V_o mu + 2 a^T X_o mu

with ``u_oc`` what the centred channel ``x_c - m_c`` of DATA contributes, ``K_o`` their
covariance, ``v_oc`` the response to a constant 1 in channel ``c`` (constant but at the zero-
padded borders), ``A_oc`` its mean and ``V_o`` the covariance of those responses over the map
and ``X_o`` the covariance between the two (the sampling noise of DATA's per-pixel means at
the borders: measured with the pairs, else taken as zero). This is the
textbook ``E[y] = W E[x] + b``, ``Var[y] = sum W^2 Var[x]`` without its assumption of
independent pixels and with the borders: ``E[u]``, ``K``, ``A`` and ``V`` are measured by
running the network on DATA with all but one (or two) centred input channels zeroed and on
constant inputs, so the spatial correlation of real images is in ``K``. The input channels
are taken as correlated (the full ``K``) for up to :data:`FULL_COVARIANCE_CHANNELS` channels
and as independent of one another (``K`` diagonal) beyond, where the pairs would cost too
many runs.

:func:`fit_correction` solves the stored statistics for ``a`` and ``mu`` together
(Levenberg-Marquardt on the mean equations in units of the stored standard deviation and the
variance equations in log space).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bncheck.numerics.drift import median

#: up to this many input channels the covariance between channels is measured (pairs)
FULL_COVARIANCE_CHANNELS = 4


@dataclass(frozen=True)
class Probes:
    """What the probe runs measured at one BN layer (O channels) for an input of C channels."""

    #: (O,) mean of the BN input with a zero input
    bias: np.ndarray
    #: (O, C) mean of the contribution of each centred input channel of DATA
    contribution: np.ndarray
    #: (O, C, C) covariance of those contributions
    covariance: np.ndarray
    #: (O, C) mean response to an input that is 1 in channel c and 0 elsewhere, less ``bias``
    response: np.ndarray
    #: (O, C, C) covariance over the map of those responses (non-zero at padded borders)
    border: np.ndarray
    #: (O, C, C) covariance of channel c's centred contribution with the response to channel
    #: c' (the sampling noise of DATA's per-pixel means at the borders); zeros when not measured
    cross: np.ndarray | None = None


@dataclass(frozen=True)
class Correction:
    """``x'_c = scale_c * (x_c - m_c) + mean_c`` and how well it explains the stored statistics."""

    scale: np.ndarray
    #: the mean of each input channel the model expects
    mean: np.ndarray
    #: root mean square of the log variance ratios left (0: every variance matched)
    var_residual: float
    #: root mean square of the mean shifts left, in stored standard deviations
    mean_residual: float


def covariance_from_pairs(single: np.ndarray, pairs: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """``K`` (O, C, C) from the variances of each channel's contribution alone, ``single``
    (O, C), and of the sums of two channels' contributions, ``pairs[(i, j)]`` (O,);
    channel pairs not given are taken as uncorrelated."""
    outputs, channels = single.shape
    k = np.zeros((outputs, channels, channels))
    for c in range(channels):
        k[:, c, c] = single[:, c]
    for (i, j), var in pairs.items():
        k[:, i, j] = k[:, j, i] = 0.5 * (var - single[:, i] - single[:, j])
    return k


def predicted(probes: Probes, scale: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E[y'], Var[y']) per BN channel for the correction (``scale``, ``mean``)."""
    mu = probes.bias + probes.contribution @ scale + probes.response @ mean
    var = np.einsum("c,ocd,d->o", scale, probes.covariance, scale) + np.einsum("c,ocd,d->o", mean, probes.border, mean)
    if probes.cross is not None:
        var = var + 2.0 * np.einsum("c,ocd,d->o", scale, probes.cross, mean)
    return mu, np.maximum(var, 0.0)


def fit_correction(
    probes: Probes, running_mean: np.ndarray, running_var: np.ndarray, eps: float, data_mean: np.ndarray, *, tied: bool = False
) -> Correction:
    """The per-channel correction of the input under which the BN input's mean and variance
    match ``running_mean`` / ``running_var`` best (see the module docstring), started from
    one common scale and DATA's own means. ``tied``: one affine map ``x' = a x + d`` for every
    channel (two numbers instead of 2C: where DATA's channels are copies of one another, grey
    images stored as RGB, their separate contributions cannot be told apart and a per-channel
    fit is ill-posed; with one ``--mean``/``--std`` for all channels it is one ``--mean``/``--std``)."""
    rm = np.asarray(running_mean, np.float64).reshape(-1)
    rv = np.asarray(running_var, np.float64).reshape(-1)
    sd = np.sqrt(rv + eps)
    channels = probes.response.shape[1]

    means = np.asarray(data_mean, np.float64).reshape(-1)

    def expand(p: np.ndarray) -> np.ndarray:
        """Tied: (a, d) -> a for every channel, mu_c = d + a m_c (x' = a x + d, one map for all)."""
        return np.concatenate([np.full(channels, p[0]), p[1] + p[0] * means]) if tied else p

    def full_residual(p: np.ndarray) -> np.ndarray:
        mu, var = predicted(probes, p[:channels], p[channels:])
        return np.concatenate([(mu - rm) / sd, np.log(var + eps) - np.log(rv + eps)])

    def residual(p: np.ndarray) -> np.ndarray:
        return full_residual(expand(p))

    current = np.einsum("ocd->o", probes.covariance)
    ratio = median((rv + eps) / (np.maximum(current, 0.0) + eps))
    a0 = np.sqrt(max(ratio, 1e-30))
    start = np.array([a0, float(np.mean(means)) * (1.0 - a0)]) if tied else np.concatenate([np.full(channels, a0), means])
    p = expand(_levenberg_marquardt(residual, start))
    if np.sum(p[:channels] < 0) > channels / 2:  # the variance fixes a only up to its sign
        p[:channels] = -p[:channels]
    r = full_residual(p)
    return Correction(
        p[:channels], p[channels:], float(np.sqrt(np.mean(r[rm.size :] ** 2))), float(np.sqrt(np.mean(r[: rm.size] ** 2)))
    )


def _levenberg_marquardt(residual, start: np.ndarray, iterations: int = 200) -> np.ndarray:
    """A minimiser of ``|residual(p)|^2`` (forward-difference Jacobian, adaptive damping)."""
    p = start.astype(np.float64)
    r = residual(p)
    damping = 1e-3

    def jacobian(at: np.ndarray, r0: np.ndarray) -> np.ndarray:
        steps = 1e-6 * np.maximum(np.abs(at), 1e-3)
        return np.stack([(residual(at + h * e) - r0) / h for h, e in zip(steps, np.eye(at.size), strict=True)], axis=1)

    jac = jacobian(p, r)
    for _ in range(iterations):
        normal = jac.T @ jac
        step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -jac.T @ r)
        r_new = residual(p + step)
        if np.all(np.isfinite(r_new)) and r_new @ r_new < r @ r:
            p, r = p + step, r_new
            damping = max(damping / 3.0, 1e-12)
            if np.max(np.abs(step)) < 1e-10 * max(np.max(np.abs(p)), 1e-30):
                break
            jac = jacobian(p, r)
        else:
            damping *= 4.0
            if damping > 1e12:
                break
    return p
