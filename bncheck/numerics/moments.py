"""Per-channel first and second moments that merge exactly across batches.

A :class:`Moments` holds, for each channel ``c`` of a BN layer's input, the number of
elements seen ``n`` (every sample and spatial position; the same for all channels), their
mean ``mean_c`` and the sum of squared deviations from that mean
``m2_c = sum_i (x_ic - mean_c)**2``. Everything is float64.

Two sets of moments of disjoint data ``a`` and ``b`` combine without revisiting the data
(Chan, Golub & LeVeque 1979, "Updating formulae and a pairwise algorithm for computing sample
variances")::

    n     = n_a + n_b
    delta = mean_b - mean_a
    mean  = mean_a + delta * n_b / n
    m2    = m2_a + m2_b + delta**2 * n_a * n_b / n

Because ``m2`` is a sum of *centered* squares, no large quantity is ever subtracted from
another one: the variance stays accurate when the mean is large compared to the standard
deviation (the textbook ``E[x**2] - E[x]**2`` loses every digit at mean/std = 1e4 in float32).

Variances follow two conventions, named explicitly:

* population (biased) variance ``var = m2 / n`` — what BatchNorm normalises with in train mode
  and what the drift metrics and ``recalibrate`` use;
* unbiased (sample) variance ``unbiased_var = m2 / (n - 1)`` — what PyTorch adds to
  ``running_var`` during training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """Count, per-channel mean and per-channel sum of squared deviations (float64)."""

    #: number of elements per channel (samples x spatial positions); the same for every channel
    count: int
    #: (C,) float64 per-channel mean
    mean: np.ndarray
    #: (C,) float64 per-channel sum of squared deviations from ``mean``
    m2: np.ndarray

    def __post_init__(self) -> None:
        count = int(self.count)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        mean = np.array(self.mean, dtype=np.float64).reshape(-1)
        m2 = np.array(self.m2, dtype=np.float64).reshape(-1)
        if mean.shape != m2.shape:
            raise ValueError(f"mean has {mean.size} channels but m2 has {m2.size}")
        if count == 0:
            mean = np.zeros_like(mean)
            m2 = np.zeros_like(m2)
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "m2", m2)

    @classmethod
    def empty(cls, channels: int) -> Moments:
        """No data yet: ``count = 0``; the neutral element of :func:`merge`."""
        return cls(0, np.zeros(int(channels)), np.zeros(int(channels)))

    @classmethod
    def from_batch(cls, count: int, mean, m2) -> Moments:
        """Moments of one batch from its element count per channel, per-channel mean and
        per-channel sum of squared deviations ``m2_c = sum_i (x_ic - mean_c)**2``
        (= population variance x count)."""
        return cls(int(count), mean, m2)

    @classmethod
    def of_array(cls, x, channel_axis: int = 1) -> Moments:
        """Two-pass float64 moments of an array, one channel along ``channel_axis``:
        ``mean_c = sum_i x_ic / n``, then ``m2_c = sum_i (x_ic - mean_c)**2``."""
        data = np.asarray(x, dtype=np.float64)
        data = np.moveaxis(data, channel_axis, 0).reshape(data.shape[channel_axis], -1)
        if data.shape[1] == 0:
            return cls.empty(data.shape[0])
        mean = data.mean(axis=1)
        m2 = np.square(data - mean[:, None]).sum(axis=1)
        return cls(data.shape[1], mean, m2)

    @classmethod
    def from_groups(cls, counts, means, m2s) -> Moments:
        """Combine G disjoint groups at once (the parallel form of :func:`merge`).

        ``counts``: (G,) elements per channel of each group (or one int shared by all groups);
        ``means``, ``m2s``: (G, C). With ``n = sum_g n_g``::

            mean = sum_g n_g * mean_g / n
            m2   = sum_g m2_g + sum_g n_g * (mean_g - mean)**2

        Used for per-sample statistics computed inside a runtime (G = batch size).
        """
        means = np.asarray(means, dtype=np.float64)
        m2s = np.asarray(m2s, dtype=np.float64)
        if means.ndim != 2 or means.shape != m2s.shape:
            raise ValueError(
                f"means and m2s must both be (G, C); got {means.shape} and {m2s.shape}"
            )
        counts = np.broadcast_to(np.asarray(counts, dtype=np.int64), (means.shape[0],))
        total = int(counts.sum())
        if total == 0:
            return cls.empty(means.shape[1])
        weights = counts.astype(np.float64)[:, None]
        mean = (weights * means).sum(axis=0) / total
        m2 = m2s.sum(axis=0) + (weights * np.square(means - mean)).sum(axis=0)
        return cls(total, mean, m2)

    @property
    def channels(self) -> int:
        return int(self.mean.size)

    @property
    def var(self) -> np.ndarray:
        """Population (biased) variance ``m2 / count``; NaN when ``count == 0``."""
        if self.count == 0:
            return np.full(self.channels, np.nan)
        return self.m2 / self.count

    @property
    def unbiased_var(self) -> np.ndarray:
        """Unbiased (sample) variance ``m2 / (count - 1)``; NaN when ``count < 2``."""
        if self.count < 2:
            return np.full(self.channels, np.nan)
        return self.m2 / (self.count - 1)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation ``sqrt(m2 / count)``."""
        return np.sqrt(self.var)

    def merge(self, other: Moments) -> Moments:
        """See :func:`merge`."""
        return merge(self, other)


def merge(a: Moments, b: Moments) -> Moments:
    """Moments of the union of the disjoint data behind ``a`` and ``b``.

    Chan et al.'s pairwise update, in float64::

        n     = n_a + n_b
        delta = mean_b - mean_a
        mean  = mean_a + delta * n_b / n
        m2    = m2_a + m2_b + delta**2 * n_a * n_b / n
    """
    if a.channels != b.channels:
        raise ValueError(f"cannot merge moments of {a.channels} and {b.channels} channels")
    if b.count == 0:
        return a
    if a.count == 0:
        return b
    n = a.count + b.count
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / n)
    m2 = a.m2 + b.m2 + np.square(delta) * (a.count * (b.count / n))
    return Moments(n, mean, m2)


def merge_all(items: Iterable[Moments], channels: int | None = None) -> Moments:
    """Merge any number of moments of disjoint data. Computed with :meth:`Moments.from_groups`
    (all means at once), so the result does not depend on the order beyond rounding.
    ``channels`` gives the size of the result when ``items`` is empty."""
    items = list(items)
    if not items:
        if channels is None:
            raise ValueError("merge_all of nothing needs channels=")
        return Moments.empty(channels)
    if len(items) == 1:  # moments are immutable: nothing to merge
        return items[0]
    sizes = {m.channels for m in items}
    if len(sizes) > 1:
        raise ValueError(f"cannot merge moments of different channel counts {sorted(sizes)}")
    return Moments.from_groups(
        [m.count for m in items], np.stack([m.mean for m in items]), np.stack([m.m2 for m in items])
    )


@dataclass(frozen=True)
class SampleMoments:
    """Per-sample moments of one layer's input over a batch of N samples: each sample's element
    count per channel ``counts`` (N,), its channel means ``means`` and sums of squared
    deviations from them ``m2s`` (N, C), float64. Any subset of the samples merges exactly
    (:meth:`Moments.from_groups`), so statistics of a subsample kept during a pass need no
    second pass over it."""

    counts: np.ndarray
    means: np.ndarray
    m2s: np.ndarray

    @classmethod
    def of(cls, count_per_sample: int, means, m2s) -> SampleMoments:
        means = np.asarray(means, np.float64)
        return cls(np.full(means.shape[0], int(count_per_sample), np.int64), means, np.maximum(np.asarray(m2s, np.float64), 0.0))

    def __len__(self) -> int:
        return int(self.means.shape[0])

    def take(self, index) -> SampleMoments:
        """The samples at ``index`` (an index array or a slice)."""
        return SampleMoments(self.counts[index], self.means[index], self.m2s[index])

    def merged(self) -> Moments:
        """The moments of all these samples together."""
        return Moments.from_groups(self.counts, self.means, self.m2s)

    @staticmethod
    def concat(parts: list[SampleMoments]) -> SampleMoments:
        return SampleMoments(
            np.concatenate([p.counts for p in parts]), np.concatenate([p.means for p in parts]), np.concatenate([p.m2s for p in parts])
        )
