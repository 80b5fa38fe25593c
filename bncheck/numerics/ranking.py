"""How well a model's stored statistics fit DATA, as one number per model, for ranking several
models on the same DATA (``bncheck drift M1 M2 ... DATA``; the ranking leads with BN301's output
change where every model has one and uses this score for its ties and otherwise:
:func:`bncheck.report.ranking.ranking_key`).

The fit score of a model is the mean over its measured BN layers of the layer drift score
(:mod:`bncheck.numerics.drift`): the mean over channels of the squared Hellinger distance
between the Gaussian a channel was calibrated for, N(m_c, v_c + eps), and the one DATA gives it,
N(mu_c, var_c + eps). Each layer score lies in [0, 1] whatever the layer's width, and the mean
over layers does not grow with depth, so models of different widths and depths compare on one
scale (0: every channel sees exactly the statistics it stores).

Its noise level is the score that sampling alone gives on DATA: for small drifts
``H2 ~= z**2 / 8 + r**2 / 16`` (second order in z and r), and for a normally distributed sampling
error ``E[x**2] = (pi / 2) * E[|x|]**2``, so from the per-layer noise levels of mean |z| and mean
|r| that the drift rules already measure (split halves, or the analytic standard errors)::

    noise_l = (pi / 2) * (z_noise_l**2 / 8 + r_noise_l**2 / 16)

and the model's noise level is the mean of ``noise_l`` over the same layers. Two scores closer
than the larger of their noise levels are not told apart by this DATA.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def fit_score(layer_scores: Iterable[float]) -> float:
    """Mean of the finite layer scores (NaN when there is none)."""
    values = [float(s) for s in layer_scores if s is not None and math.isfinite(float(s))]
    return sum(values) / len(values) if values else float("nan")


def layer_noise_score(z_noise: float, r_noise: float) -> float:
    """The layer score sampling alone gives, from its noise levels of mean |z| and mean |r|."""
    z = float(z_noise) if z_noise is not None and math.isfinite(float(z_noise)) else 0.0
    r = float(r_noise) if r_noise is not None and math.isfinite(float(r_noise)) else 0.0
    return (math.pi / 2.0) * (z * z / 8.0 + r * r / 16.0)


def fit_noise(noise_levels: Iterable[tuple[float, float]]) -> float:
    """Mean over layers of :func:`layer_noise_score` ((z_noise, r_noise) per layer; NaN for none)."""
    values = [layer_noise_score(z, r) for z, r in noise_levels]
    return sum(values) / len(values) if values else float("nan")


def distinguishable(score: float, other: float, noise: float, other_noise: float) -> bool:
    """Whether two fit scores differ by more than the larger of their noise levels."""
    if not (math.isfinite(score) and math.isfinite(other)):
        return True
    floor = max(x for x in (noise, other_noise, 0.0) if math.isfinite(x))
    return abs(score - other) > floor
