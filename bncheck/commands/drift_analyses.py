"""The analyses of ``bncheck drift`` beyond the per-layer figures: the first drifting layer,
whether the input drift is strong and the per-channel arrays of the scatter plots (BN201's and
BN301's output analyses and the accuracy are in :mod:`bncheck.commands.drift_outputs`, BN103's
diagnosis in :mod:`bncheck.commands.drift_diagnosis`). Each is a function
of a runner, the layers and measured moments; :func:`bncheck.commands.drift.drift` calls them."""

from __future__ import annotations

import numpy as np

from bncheck.numerics import drift as metrics
from bncheck.numerics.moments import Moments


def compute_drift(source_layers, moments: dict[str, Moments], samples: int, halves=None) -> dict[str, metrics.LayerDrift]:
    """Per layer with running statistics, its drift figures; with ``halves`` (moments of two
    disjoint halves of DATA, :class:`~bncheck.commands.drift_outputs.Halves`), the noise level
    of mean |z| and mean |r| measured on them."""
    out = {}
    for layer in source_layers:
        m = moments.get(layer.name)
        if m is None or not layer.has_running_stats or layer.eps is None or m.count == 0:
            continue
        d = metrics.layer_drift(m.mean, m.var, layer.running_mean, layer.running_var, layer.eps, samples=samples, elements=int(m.count))
        if halves is not None and layer.name in halves.even and layer.name in halves.odd and halves.even[layer.name].count and halves.odd[layer.name].count:
            a, b = halves.even[layer.name], halves.odd[layer.name]
            stats = (layer.running_mean, layer.running_var, layer.eps)
            d.z_noise = metrics.half_noise(metrics.mean_shift(a.mean, *stats), metrics.mean_shift(b.mean, *stats), samples, halves.n_even, halves.n_odd)
            d.r_noise = metrics.half_noise(
                metrics.var_log_ratio(a.var, layer.running_var, layer.eps), metrics.var_log_ratio(b.var, layer.running_var, layer.eps),
                samples, halves.n_even, halves.n_odd,
            )  # fmt: skip
        out[layer.name] = d
    return out


def first_drifting_layer(order: list[str], drift: dict[str, metrics.LayerDrift], thresholds: dict) -> str | None:
    z_warn = thresholds.get("BN101", {}).get("warning", 0.25)
    r_warn = thresholds.get("BN102", {}).get("warning", 0.25)
    for name in order:
        d = drift.get(name)
        if d and (d.mean_shift.mean >= z_warn or d.var_log_ratio.mean >= r_warn):
            return name
    return None


def input_drift_is_strong(first: list[str], drift: dict[str, metrics.LayerDrift], thresholds: dict) -> bool:
    """Whether the BN layers nearest the input drift enough to try candidate corrections: a
    score at BN103's threshold, or mean |z| / mean |r| at BN101/BN102's error thresholds."""
    score = thresholds.get("BN103", {}).get("score", 0.3)
    z_err = thresholds.get("BN101", {}).get("error", 0.5)
    r_err = thresholds.get("BN102", {}).get("error", 0.5)
    return any(
        drift[n].score >= score or drift[n].mean_shift.mean >= z_err or drift[n].var_log_ratio.mean >= r_err
        for n in first
    )


def channel_arrays(layers, moments: dict[str, Moments], drift_by_layer: dict[str, metrics.LayerDrift]) -> dict[str, dict[str, list]]:
    """Per measured layer, {running_mean, running_var, mean, var, z, r}: one entry per channel
    (6 significant digits; NaN/Inf become null in JSON), for the per-channel scatter plots."""

    def rounded(values) -> list:
        return [float(f"{v:.6g}") for v in np.asarray(values, np.float64).tolist()]

    by_name = {layer.name: layer for layer in layers}
    return {
        name: {
            "running_mean": rounded(by_name[name].running_mean),
            "running_var": rounded(by_name[name].running_var),
            "mean": rounded(moments[name].mean),
            "var": rounded(moments[name].var),
            "z": rounded(d.z),
            "r": rounded(d.r),
        }
        for name, d in drift_by_layer.items()
    }
