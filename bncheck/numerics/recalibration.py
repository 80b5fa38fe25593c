"""The arithmetic of ``bncheck recalibrate`` beyond the moments themselves: the prior blend of
stored and measured statistics, the per-channel convergence test of the exact method, how
precisely a pass has pinned every channel's statistics, and the paired test of the guard.

* :func:`blend`: Schneider et al., "Improving robustness against common corruptions by
  covariate shift adaptation" (NeurIPS 2020), eq. 3: with a pseudo sample size ``N`` for the
  stored (source) statistics and ``n`` samples read, ``(N * stored + n * measured) / (N + n)``
  for the mean and for the variance alike.
* :class:`PrecisionTracker`: the half-width of a confidence interval of every channel's mean
  (in channel standard deviations) and variance (relative, i.e. of ``log var``, the BN102
  figure), from the scatter of the per-batch moments (the batch-means method, which counts
  the correlation between the elements of one sample and any excess kurtosis), never below the
  normal-theory figures of the element count (``1/sqrt(n)`` for the mean, the chi-square
  ``sqrt(2/n)`` for the variance).
* :func:`paired_worse`: whether per-sample losses after a change exceed those before by more
  than ``z`` standard errors of their paired difference (for 0/1 losses the normal
  approximation of McNemar's test).
"""

from __future__ import annotations

import math

import numpy as np

#: the normal quantile of a two-sided 95% interval
Z95 = 1.959964


def blend(stored: tuple[np.ndarray, np.ndarray], measured: tuple[np.ndarray, np.ndarray], prior: float, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``(prior * stored + samples * measured) / (prior + samples)`` for the mean and the
    variance (``prior`` 0: the measured statistics themselves)."""
    if prior <= 0:
        return measured[0].copy(), measured[1].copy()
    w = float(prior) / (float(prior) + float(samples))
    mean = w * np.asarray(stored[0], np.float64) + (1 - w) * np.asarray(measured[0], np.float64)
    var = w * np.asarray(stored[1], np.float64) + (1 - w) * np.asarray(measured[1], np.float64)
    return mean, var


def relative_change(old: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray], eps: float) -> float:
    """The largest per-channel change between two estimates: the mean's in units of the
    channel's standard deviation, the variance's relative to it (both with the layer's eps)."""
    scale = np.sqrt(np.asarray(new[1], np.float64) + eps)
    dm = np.abs(np.asarray(new[0], np.float64) - old[0]) / scale
    dv = np.abs(np.asarray(new[1], np.float64) - old[1]) / (np.asarray(new[1], np.float64) + eps)
    values = np.concatenate([dm.ravel(), dv.ravel()])
    if values.size == 0:
        return 0.0
    if not np.all(np.isfinite(values)):
        return math.inf
    return float(values.max())


class _LayerSums:
    """Per-batch sums of one layer's channel means and second moments (centred on the first
    batch's mean, so large means do not cancel)."""

    def __init__(self, mean: np.ndarray) -> None:
        self.ref = np.asarray(mean, np.float64).copy()
        zeros = np.zeros_like(self.ref)
        self.batches = 0
        self.elements = 0
        self.m, self.mm, self.s, self.ss, self.sm = zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy()

    def add(self, count: int, mean: np.ndarray, var: np.ndarray) -> None:
        d = np.asarray(mean, np.float64) - self.ref
        s = np.asarray(var, np.float64) + d * d  # E[(x - ref)^2] within the batch
        self.batches += 1
        self.elements += int(count)
        self.m += d
        self.mm += d * d
        self.s += s
        self.ss += s * s
        self.sm += s * d

    def half_widths(self, z: float, eps: float) -> tuple[np.ndarray, np.ndarray]:
        """(mean half-width in standard deviations, relative variance half-width) per channel."""
        b = self.batches
        m, s = self.m / b, self.s / b
        var = np.maximum(s - m * m, 0.0)
        if b > 1:
            var_m = np.maximum(self.mm / b - m * m, 0.0) * b / (b - 1)
            var_s = np.maximum(self.ss / b - s * s, 0.0) * b / (b - 1)
            cov = (self.sm / b - s * m) * b / (b - 1)
            # var = S - M^2: its per-batch influence is s_b - 2 M m_b (delta method)
            var_u = np.maximum(var_s - 4 * m * cov + 4 * m * m * var_m, 0.0)
            se_mean, se_var = np.sqrt(var_m / b), np.sqrt(var_u / b)
        else:
            se_mean = se_var = np.full_like(var, np.inf)
        n = max(self.elements, 1)
        mean_hw = z * np.maximum(se_mean / np.sqrt(var + eps), 1.0 / math.sqrt(n))
        var_hw = z * np.maximum(se_var / (var + eps), math.sqrt(2.0 / n))
        return mean_hw, var_hw


class PrecisionTracker:
    """How precisely the batches seen so far pin every channel's mean and variance.

    ``add`` takes one batch's per-layer :class:`~bncheck.numerics.moments.Moments`; ``reached``
    is the largest half-width over every layer and channel (mean in channel standard deviations,
    variance relative), at the confidence of ``z`` (1.96: 95%, two-sided); ``done`` says whether
    it is at most ``tolerance`` after at least ``min_batches`` batches (the batch-means scatter
    needs a few batches to be trusted). ``tolerance`` None only measures.
    """

    def __init__(self, tolerance: float | None, *, eps: dict[str, float] | None = None, z: float = Z95, min_batches: int = 10) -> None:
        self.tolerance = tolerance
        self.z = z
        self.min_batches = min_batches
        self.eps = dict(eps or {})
        self.samples = 0
        self._layers: dict[str, _LayerSums] = {}

    def add(self, moments: dict, samples: int) -> None:
        self.samples += int(samples)
        for name, m in moments.items():
            if m.count < 1:
                continue
            sums = self._layers.get(name)
            if sums is None:
                sums = self._layers[name] = _LayerSums(m.mean)
            sums.add(m.count, m.mean, m.var)

    @property
    def batches(self) -> int:
        return max((s.batches for s in self._layers.values()), default=0)

    def reached(self) -> dict[str, float]:
        """``{"mean": worst mean half-width, "variance": worst relative variance half-width,
        "layer": where the worse of the two is}`` (infinite before two batches)."""
        worst_mean = worst_var = 0.0
        where, worst = None, -1.0
        for name, sums in self._layers.items():
            mean_hw, var_hw = sums.half_widths(self.z, self.eps.get(name, 1e-5))
            top_m = float(np.max(mean_hw)) if mean_hw.size else 0.0
            top_v = float(np.max(var_hw)) if var_hw.size else 0.0
            worst_mean, worst_var = max(worst_mean, top_m), max(worst_var, top_v)
            if max(top_m, top_v) > worst:
                where, worst = name, max(top_m, top_v)
        if not self._layers:
            worst_mean = worst_var = math.inf
        return {"mean": worst_mean, "variance": worst_var, "layer": where}

    @property
    def done(self) -> bool:
        if self.tolerance is None or self.batches < self.min_batches:
            return False
        figures = self.reached()
        return max(figures["mean"], figures["variance"]) <= self.tolerance


def fewest_flagged(samples: int, z: float = Z95) -> int | None:
    """The fewest of ``samples`` paired 0/1 losses that must get worse (the others unchanged)
    for :func:`paired_worse` to flag the change: the smallest k with ``k (n - 1 + z²) > z² n``
    (the mean difference k/n beyond z standard errors). None where no k can: one sample has
    no standard error."""
    if samples < 2:
        return None
    return math.floor(z * z * samples / (samples - 1 + z * z)) + 1


def paired_worse(before: np.ndarray, after: np.ndarray, z: float = Z95) -> dict[str, float | bool]:
    """Whether the per-sample losses ``after`` are worse than ``before`` (same samples) beyond
    noise: the mean paired difference exceeds ``z`` standard errors of it."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    n = int(before.size)
    if n == 0:
        return {"samples": 0, "difference": 0.0, "standard_error": math.nan, "worse": False}
    d = after - before
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    worse = mean > 0 and (se == 0 or mean > z * se) and math.isfinite(se)
    return {"samples": n, "difference": mean, "standard_error": se, "worse": bool(worse)}
