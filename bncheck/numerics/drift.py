"""Drift metrics: how the statistics a BN layer sees on data differ from the ones it stores.

Per channel c, with ``mu_c``/``var_c`` the mean and population variance of the layer's input
over the data, and ``m_c``/``v_c`` the stored running mean and variance:

* mean shift         ``z_c = (mu_c - m_c) / sqrt(v_c + eps)``
* variance log-ratio ``r_c = ln((var_c + eps) / (v_c + eps))``
* layer score: the mean over channels of the squared Hellinger distance between the
  Gaussian the layer was calibrated for, N(m_c, v_c + eps), and the one it sees,
  N(mu_c, var_c + eps). In terms of z and r::

      H2_c = 1 - sqrt(sech(r_c / 2)) * exp(-z_c**2 / (4 * (1 + exp(r_c))))

  0 means identical, 1 means disjoint; it grows with both kinds of drift and is bounded, so
  layers of any width and depth compare on one scale.

All functions are pure numpy, shared by every backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def mean_shift(mu: np.ndarray, running_mean: np.ndarray, running_var: np.ndarray, eps: float) -> np.ndarray:
    """``z_c = (mu_c - running_mean_c) / sqrt(running_var_c + eps)``."""
    return (np.asarray(mu, np.float64) - running_mean) / np.sqrt(np.asarray(running_var, np.float64) + eps)


def var_log_ratio(var: np.ndarray, running_var: np.ndarray, eps: float) -> np.ndarray:
    """``r_c = ln((var_c + eps) / (running_var_c + eps))``."""
    return np.log((np.asarray(var, np.float64) + eps) / (np.asarray(running_var, np.float64) + eps))


def hellinger_sq(z: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Squared Hellinger distance per channel between N(m, v) and N(m + z*sqrt(v), v*e^r)."""
    z = np.asarray(z, np.float64)
    r = np.asarray(r, np.float64)
    with np.errstate(over="ignore"):
        sech_half = 1.0 / np.cosh(r / 2.0)
        overlap = np.sqrt(sech_half) * np.exp(-(z**2) / (4.0 * (1.0 + np.exp(r))))
    return np.clip(1.0 - overlap, 0.0, 1.0)


@dataclass
class Summary:
    """mean/max of |x| over channels and the channel of the max (the contract's shape)."""

    mean: float
    max: float
    channel: int

    @classmethod
    def of(cls, values: np.ndarray) -> Summary:
        mags = np.abs(np.asarray(values, np.float64))
        finite = np.where(np.isfinite(mags), mags, -np.inf)
        if mags.size == 0 or not np.isfinite(finite).any():
            return cls(float("nan"), float("nan"), -1)
        channel = int(np.argmax(finite))
        return cls(float(np.nanmean(mags[np.isfinite(mags)])), float(mags[channel]), channel)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "max": self.max, "channel": self.channel}


@dataclass
class LayerDrift:
    """Drift figures of one layer (per-channel arrays kept for plots and saved stats)."""

    samples: int
    elements: int
    z: np.ndarray
    r: np.ndarray
    h2: np.ndarray
    #: standard errors of mean |z| and mean |r| from sampling alone (see :func:`uncertainty`)
    z_se: float
    r_se: float
    #: mean |z| and mean |r| that sampling noise alone gives, measured on two halves of the
    #: data (see :func:`half_noise`); NaN where no halves were measured
    z_noise: float = float("nan")
    r_noise: float = float("nan")

    def noise(self) -> tuple[float, float]:
        """(mean |z|, mean |r|) expected from sampling alone: the larger of the split-half
        figures and the analytic ones (``sqrt(2/pi)`` times the standard errors, normal errors).
        The analytic floor matters for heavy-tailed inputs at small n: two halves that both miss
        the tail agree with each other while both underestimate the variance."""
        z_analytic, r_analytic = float(np.sqrt(2 / np.pi) * self.z_se), float(np.sqrt(2 / np.pi) * self.r_se)
        z = max(self.z_noise, z_analytic) if np.isfinite(self.z_noise) else z_analytic
        r = max(self.r_noise, r_analytic) if np.isfinite(self.r_noise) else r_analytic
        return z, r

    @property
    def mean_shift(self) -> Summary:
        return Summary.of(self.z)

    @property
    def var_log_ratio(self) -> Summary:
        return Summary.of(self.r)

    @property
    def score(self) -> float:
        return float(np.mean(self.h2)) if self.h2.size else float("nan")

    def to_dict(self) -> dict:
        return {
            "samples": int(self.samples),
            "elements": int(self.elements),
            "mean_shift": self.mean_shift.to_dict(),
            "var_log_ratio": self.var_log_ratio.to_dict(),
            "score": self.score,
            "uncertainty": {"mean_shift_se": self.z_se, "var_log_ratio_se": self.r_se},
            "noise": dict(zip(("mean_shift", "var_log_ratio"), self.noise(), strict=True)),
        }


def median(values) -> float:
    """``np.median`` of a 1-D array without its import of ``numpy.ma`` (20 ms of every run):
    NaN when any value is NaN, as ``np.median``."""
    a = np.asarray(values, np.float64).ravel()
    if a.size == 0 or np.isnan(a).any():
        return float("nan")
    low, high = (a.size - 1) // 2, a.size // 2
    part = np.partition(a, [low, high])
    return float((part[low] + part[high]) / 2)


def uncertainty(var: np.ndarray, running_var: np.ndarray, eps: float, samples: int) -> tuple[float, float]:
    """Sampling standard errors of z and r, conservatively counting one independent value per
    sample and channel (neighbouring positions of one image are strongly correlated, so the
    element count would overstate the precision).

    SE(z_c) = sqrt(var_c / (running_var_c + eps) / n);  SE(r_c) ~= sqrt(2 / (n - 1))
    (the log of a chi-square variance estimate). Returned as medians over channels.
    """
    n = max(int(samples), 1)
    ratio = np.asarray(var, np.float64) / (np.asarray(running_var, np.float64) + eps)
    z_se = median(np.sqrt(np.maximum(ratio, 0.0) / n)) if ratio.size else float("nan")
    r_se = float(np.sqrt(2.0 / max(n - 1, 1)))
    return z_se, r_se


def layer_drift(
    mu: np.ndarray,
    var: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float,
    *,
    samples: int,
    elements: int,
) -> LayerDrift:
    z = mean_shift(mu, running_mean, running_var, eps)
    r = var_log_ratio(var, running_var, eps)
    z_se, r_se = uncertainty(var, running_var, eps, samples)
    return LayerDrift(samples=samples, elements=elements, z=z, r=r, h2=hellinger_sq(z, r), z_se=z_se, r_se=r_se)


def batch_scatter(batch_means: np.ndarray, batch_vars: np.ndarray, mu: np.ndarray, var: np.ndarray, eps: float) -> dict:
    """How far per-batch statistics scatter around the population statistics.

    ``batch_means``/``batch_vars``: (B, C) per-batch channel statistics; ``mu``/``var``: (C,)
    population statistics. Returns the mean over channels of the RMS over batches of
    ``(batch_mean - mu) / sqrt(var + eps)`` (mean scatter, in channel standard deviations)
    and of ``ln((batch_var + eps) / (var + eps))`` (variance scatter).
    """
    bm = np.asarray(batch_means, np.float64)
    bv = np.asarray(batch_vars, np.float64)
    sd = np.sqrt(np.asarray(var, np.float64) + eps)
    dz = (bm - mu) / sd
    dr = np.log((bv + eps) / (np.asarray(var, np.float64) + eps))
    return {
        "mean_scatter": float(np.mean(np.sqrt(np.mean(dz**2, axis=0)))),
        "var_scatter": float(np.mean(np.sqrt(np.mean(dr**2, axis=0)))),
        "batches": int(bm.shape[0]),
    }


def half_noise(a: np.ndarray, b: np.ndarray, n: int, n_a: int, n_b: int) -> float:
    """Mean over channels of the |figure| sampling noise alone gives on ``n`` samples, from the
    per-channel figures ``a`` and ``b`` (z or r) of two disjoint halves of ``n_a`` and ``n_b``
    samples: ``a - b`` has the variance of the figure on ``n`` samples times
    ``(1/n_a + 1/n_b) / (1/n)``, so ``|a - b|`` is scaled back by the root of that. Measured,
    not assumed: heavy tails, correlated positions and batch effects are in it."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any() or min(n_a, n_b) < 1:
        return float("nan")
    factor = np.sqrt((1.0 / max(n, 1)) / (1.0 / n_a + 1.0 / n_b))
    return float(np.mean(np.abs(a[ok] - b[ok])) * factor)

