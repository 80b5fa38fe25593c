"""The output analyses of ``bncheck drift``: BN301 (what the stored statistics do to the outputs
on this data) and BN201 (what normalising with the statistics of small batches does).

BN301 compares, on the kept subsample, the model normalised with its stored running statistics
(the main pass's eval outputs, reused) with the same model normalised with DATA's own population
statistics — the per-layer moments the main pass measured, which is what ``recalibrate`` writes
up to a one-pass approximation: each layer's statistics are measured with the layers before it
still normalised with their stored statistics (``recalibrate --method exact`` iterates this to
a fixed point). Its noise floor is the same comparison between the statistics of one half of
DATA (the even batches of the main pass) and of all of it, which differ by sampling alone as much
as DATA's statistics differ from the true population's: two extra eval passes over the
subsample, no train-mode pass.

BN201 runs the subsample with BN in train mode in batches of ``--train-batch-size`` (one pass).

Outputs of any structure (:mod:`bncheck.numerics.outputs`): batch-first, per position over the
class axis, relative error without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bncheck.backends.interface import ModelSource, Statistics
from bncheck.backends.load import backend_for
from bncheck.engines.measure import Measurement, array_moments, output_class_axis
from bncheck.numerics import drift as metrics
from bncheck.numerics.moments import Moments, merge_all
from bncheck.numerics.outputs import OutputComparison, accuracy, compare


@dataclass
class OutputSetting:
    """How the outputs of a run are compared: the subsample, its eval outputs and labels."""

    sub: np.ndarray
    #: eval-mode (stored statistics) outputs of ``sub``, batch-first
    reference: np.ndarray
    labels: np.ndarray | None
    #: the per-sample class axis (None: compare by relative error)
    class_axis: int | None
    batch_size: int


def output_setting(result: Measurement, samples: int, class_axis: int | str, batch_size: int) -> OutputSetting | None:
    """The subsample of the main pass (its first ``samples``) and how to compare its outputs;
    None when the pass kept none or the model's outputs have no batch axis."""
    if result.subsample is None or result.sub_outputs is None or samples <= 0:
        return None
    ref = result.sub_outputs[:samples]
    if ref.ndim < 1 or ref.size == 0:
        raise ValueError("the model's first output has no axis that follows the batch size, so outputs cannot be compared per sample")
    labels = result.sub_labels[:samples] if result.sub_labels is not None else None
    axis = output_class_axis(ref, class_axis, result.batch_axis)
    return OutputSetting(result.subsample[:samples], ref, labels, axis, batch_size)


def population_statistics(layers, moments: dict[str, Moments]) -> Statistics:
    """Per layer with running statistics and measured input, DATA's (mean, population var)."""
    return {
        layer.name: (np.asarray(moments[layer.name].mean, np.float64), np.asarray(moments[layer.name].var, np.float64))
        for layer in layers
        if layer.has_running_stats and layer.name in moments and moments[layer.name].count > 0
    }


def outputs_with(source: ModelSource, stats: Statistics, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Eval-mode outputs of ``x`` (batch-first) from a copy of ``source`` carrying ``stats``."""
    copy = backend_for(source).with_statistics(source, stats)
    copy.device = source.device  # the copy runs where the model runs (--device)
    with copy.runner(layers=[]) as runner:
        return np.concatenate([runner.forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _halves(runner, layers, result: Measurement, setting: OutputSetting) -> tuple[Statistics, int, str]:
    """The statistics of one half of DATA, how many samples they rest on, and where it came from:
    the even batches of the main pass, or (one batch, or an engine that keeps no halves) the even
    samples of the subsample, measured now."""
    if result.halves is not None:
        even = result.halves[0]
        count = _samples_of(even, result)
        return population_statistics(layers, even), count, "even batches of DATA"
    half = setting.sub[0::2]
    names = [layer.name for layer in layers]
    measured = array_moments(runner, half, setting.batch_size, names)
    return population_statistics(layers, measured), len(half), "even samples of the subsample"


def _samples_of(moments: dict[str, Moments], result: Measurement) -> int:
    """Samples behind a half's moments: its share of the elements of the first measured layer."""
    for name, m in moments.items():
        whole = result.moments.get(name)
        if whole is not None and whole.count > 0:
            return max(1, round(result.samples * float(m.count) / float(whole.count)))
    return max(1, result.samples // 2)


def floor_scale(n: int, n_half: int) -> float:
    """Factor that turns the half-vs-all difference of statistics from ``n_half`` of ``n``
    samples into the sampling noise of statistics from all ``n``: the two differ in variance
    by ``1/n_half - 1/n`` against ``1/n`` (1 for two halves of DATA)."""
    gap = 1.0 / max(n_half, 1) - 1.0 / max(n, 1)
    return math.sqrt((1.0 / max(n, 1)) / gap) if gap > 0 else 1.0


def excess_t(effect: np.ndarray, floor: np.ndarray, multiple: float) -> float:
    """t statistic over the samples of ``effect_i - multiple * floor_i`` (per-sample values):
    how many standard errors the effect lies beyond ``multiple`` times the noise floor."""
    x = np.asarray(effect, np.float64) - multiple * np.asarray(floor, np.float64)
    if x.size < 2:
        return float("nan")
    mean, se = float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))
    if se == 0:
        return math.inf if mean > 0 else (0.0 if mean == 0 else -math.inf)
    return mean / se


def _figures(effect: OutputComparison, floor: OutputComparison, scale: float) -> dict[str, Any]:
    """The effect and noise-floor figures (floor scaled to the noise of all of DATA) and the
    per-sample values the significance is computed on."""
    out: dict[str, Any] = effect.to_dict()
    noise: dict[str, Any] = {"relative_error": floor.relative_error * scale}
    if effect.sample_flips is not None and floor.sample_flips is not None and effect.positions:
        noise["top1_agreement"] = 1.0 - (floor.disagreement or 0.0) * scale
        out["flips"] = effect.flips
        per_effect = effect.sample_flips / effect.positions
        per_floor = floor.sample_flips / effect.positions * scale
    else:
        per_effect, per_floor = effect.sample_errors, floor.sample_errors * scale
    out["noise_floor"] = noise
    out["_per_sample"] = (per_effect, per_floor)
    return out


def stale_statistics(
    source: ModelSource, runner, layers, result: Measurement, setting: OutputSetting, *, multiple: float, ranking: list[str]
) -> dict[str, Any]:
    """BN301's figures: stored vs DATA's own population statistics, with the noise floor."""
    full = population_statistics(layers, result.moments)
    if not full:
        return {}
    half, n_half, where = _halves(runner, layers, result, setting)
    pop = outputs_with(source, full, setting.sub, setting.batch_size)
    halved = outputs_with(source, half, setting.sub, setting.batch_size)
    effect = compare(setting.reference, pop, setting.class_axis)
    floor = compare(pop, halved, setting.class_axis)
    scale = floor_scale(result.samples, n_half)
    out = _figures(effect, floor, scale)
    per_effect, per_floor = out.pop("_per_sample")
    out.update(
        method="population statistics, one pass",
        statistics_samples=int(result.samples),
        batch_axis=result.batch_axis,
        class_axis=setting.class_axis,
        significance=excess_t(per_effect, per_floor, multiple),
        noise_multiple=float(multiple),
    )
    out["noise_floor"].update(halves=where, half_samples=int(n_half), scale=scale)
    before, after = accuracy(setting.reference, setting.labels, setting.class_axis), accuracy(pop, setting.labels, setting.class_axis)
    if before is not None and after is not None:
        out.update(accuracy_stored=before, accuracy_population=after)
    out["top_layers"] = [name for name in ranking if name in full][:5]
    return out


def small_batch_risk(layers, runner, setting: OutputSetting, batch_size: int) -> dict[str, Any]:
    """BN201: scatter of size-B batch statistics around the population statistics and how the
    outputs change, from one train-mode pass over the subsample in full batches of B."""
    outs, per_layer = [], {}
    for start in range(0, len(setting.sub) - batch_size + 1, batch_size):
        out, moments = runner.train_moments(setting.sub[start : start + batch_size])
        outs.append(out)
        for name, m in moments.items():
            per_layer.setdefault(name, []).append(m)
    if not outs or batch_size < 2:
        return {}
    usable = len(outs) * batch_size
    result: dict[str, Any] = {"batch_size": int(batch_size), "samples": int(usable), "layers": {}}
    worst, worst_value = None, -1.0
    eps = {layer.name: layer.eps or 1e-5 for layer in layers}
    for name, ms in per_layer.items():
        if not ms or ms[0].count == 0:
            continue
        pooled = merge_all(ms)
        sc = metrics.batch_scatter(np.stack([m.mean for m in ms]), np.stack([m.var for m in ms]), pooled.mean, pooled.var, eps.get(name, 1e-5))
        result["layers"][name] = sc
        if sc["mean_scatter"] > worst_value:
            worst, worst_value = name, sc["mean_scatter"]
    result.update(worst_layer=worst, max_mean_scatter=worst_value)
    effect = compare(setting.reference[:usable], np.concatenate(outs), setting.class_axis)
    result["relative_error"] = effect.relative_error
    if effect.agreement is not None and effect.positions and effect.sample_flips is not None:
        result.update(flip_rate=1.0 - effect.agreement, positions=effect.positions)
        result["flip_rate_se"] = _standard_error(effect.sample_flips / effect.positions)
    else:
        result["relative_error_se"] = _standard_error(effect.sample_errors)
    return result


def _standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of per-sample ``values``."""
    v = np.asarray(values, np.float64)
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")


def run_accuracy(result: Measurement) -> float | None:
    """Top-1 accuracy of the main pass on labelled DATA (None without labels, or where the
    output has no single class per sample)."""
    if result.correct is not None:
        return float(result.correct / result.labelled) if result.labelled else None
    if result.labels is None or not result.outputs_for_accuracy:
        return None
    preds = np.concatenate(result.outputs_for_accuracy)
    if len(preds) != len(result.labels):
        return None
    return float(np.mean(preds == result.labels))
