"""The analyses of ``bncheck drift`` beyond the per-layer figures: the first drifting layer,
BN201's small-batch scatter, BN301's train/eval mismatch, the
per-channel arrays of the scatter plots and the accuracy on labelled DATA. Each is a function
of a runner, the layers and measured moments; :func:`bncheck.commands.drift.drift` calls them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bncheck.engines.measure import Measurement
from bncheck.numerics import drift as metrics
from bncheck.numerics.moments import Moments, merge_all


def compute_drift(source_layers, moments: dict[str, Moments], samples: int) -> dict[str, metrics.LayerDrift]:
    out = {}
    for layer in source_layers:
        m = moments.get(layer.name)
        if m is None or not layer.has_running_stats or layer.eps is None or m.count == 0:
            continue
        out[layer.name] = metrics.layer_drift(
            m.mean,
            m.var,
            layer.running_mean,
            layer.running_var,
            layer.eps,
            samples=samples,
            elements=int(m.count),
        )
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


def _layer_divergence(moment_batches: dict[str, list[Moments]], layers) -> dict[str, float]:
    """Mean squared-Hellinger score between each batch's statistics and the running statistics."""
    by_name = {layer.name: layer for layer in layers}
    out = {}
    for name, ms in moment_batches.items():
        layer = by_name.get(name)
        if layer is None or not layer.has_running_stats:
            continue
        scores = []
        for m in ms:
            z = metrics.mean_shift(m.mean, layer.running_mean, layer.running_var, layer.eps)
            r = metrics.var_log_ratio(m.var, layer.running_var, layer.eps)
            scores.append(float(np.mean(metrics.hellinger_sq(z, r))))
        out[name] = float(np.mean(scores)) if scores else float("nan")
    return out


@dataclass
class TrainBatches:
    """One train-mode pass over a subsample: the outputs and per-layer moments of each batch."""

    batch_size: int
    sizes: list[int]
    outputs: list[np.ndarray]
    moments: list[dict[str, Moments]]


def train_batches(runner, sub: np.ndarray, batch_size: int, *, full_only: bool = False) -> TrainBatches:
    """Run ``sub`` through the model with BN in train mode, in batches of ``batch_size`` (a
    trailing batch of one sample, which has no batch statistics, is left out, and with
    ``full_only`` any trailing batch smaller than ``batch_size``). BN201 and BN301 share one
    such pass when their batch sizes are equal."""
    result = TrainBatches(int(batch_size), [], [], [])
    if batch_size < 1:
        return result
    for start in range(0, len(sub), batch_size):
        chunk = sub[start : start + batch_size]
        if len(chunk) < 2 or (full_only and len(chunk) < batch_size):
            break
        out, moments = runner.train_moments(chunk)
        result.sizes.append(len(chunk))
        result.outputs.append(out)
        result.moments.append(moments)
    return result


def small_batch_risk(layers, batches: TrainBatches, eval_out: np.ndarray) -> dict:
    """BN201: scatter of size-B batch statistics and prediction flips, from the full batches
    of a train-mode pass at B."""
    full = [k for k, size in enumerate(batches.sizes) if size == batches.batch_size]
    if not full:
        return {}
    usable = len(full) * batches.batch_size
    per_layer: dict[str, list[Moments]] = {}
    for k in full:
        for name, m in batches.moments[k].items():
            per_layer.setdefault(name, []).append(m)
    result: dict[str, Any] = {"batch_size": batches.batch_size, "samples": int(usable), "layers": {}}
    worst, worst_value = None, -1.0
    for name, ms in per_layer.items():
        pooled = merge_all(ms)
        eps = next((layer.eps for layer in layers if layer.name == name), 1e-5) or 1e-5
        sc = metrics.batch_scatter(
            np.stack([m.mean for m in ms]), np.stack([m.var for m in ms]), pooled.mean, pooled.var, eps
        )
        result["layers"][name] = sc
        if sc["mean_scatter"] > worst_value:
            worst, worst_value = name, sc["mean_scatter"]
    result["worst_layer"] = worst
    result["max_mean_scatter"] = worst_value
    train_out = np.concatenate([batches.outputs[k] for k in full])
    agreement = metrics.output_agreement(eval_out[:usable], train_out)
    if "top1_agreement" in agreement:
        result["flip_rate"] = 1.0 - agreement["top1_agreement"]
    result["relative_error"] = agreement["relative_error"]
    return result


def train_eval_mismatch(layers, batches: TrainBatches, eval_out: np.ndarray) -> dict:
    """BN301: outputs with batch statistics (train-mode BN, every batch of the pass) vs running
    statistics."""
    if not batches.outputs:
        return {}
    train_out = np.concatenate(batches.outputs)
    result = metrics.output_agreement(eval_out[: len(train_out)], train_out)
    per_layer: dict[str, list[Moments]] = {}
    for moments in batches.moments:
        for name, m in moments.items():
            per_layer.setdefault(name, []).append(m)
    divergence = _layer_divergence(per_layer, layers)
    ranked = sorted(divergence, key=lambda n: -divergence[n] if math.isfinite(divergence[n]) else math.inf)
    result.update({"batch_size": batches.batch_size, "top_layers": ranked[:5], "per_layer": divergence})
    return result


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


def accuracy(result: Measurement) -> float | None:
    """Top-1 accuracy on labelled DATA (None without labels)."""
    if result.correct is not None:
        return float(result.correct / result.labelled) if result.labelled else None
    if result.labels is None or not result.outputs_for_accuracy:
        return None
    preds = np.concatenate(result.outputs_for_accuracy)
    if len(preds) != len(result.labels):
        return None
    return float(np.mean(preds == result.labels))
