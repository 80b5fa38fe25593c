"""The output analyses of ``bncheck drift``: BN301 (what the stored statistics do to the outputs
on this data) and BN201 (what normalising with the statistics of small batches does), and the
split halves of DATA that give BN101, BN102 and BN301 their noise floor.

BN301 compares, on the kept subsample, the model normalised with its stored running statistics
(the main pass's eval outputs, reused) with the same model normalised with DATA's own population
statistics, what ``recalibrate --method exact`` writes: the per-layer moments of the main pass
(each layer measured with the layers before it on their stored statistics: a one-pass
approximation) refined on the subsample until every layer's statistics are those it sees once
the layers before it use DATA's statistics too (:func:`bncheck.commands.drift_refine.refine`).
Its noise floor is the same comparison between the statistics of one half of DATA (the even
batches of the main pass) and of all of it, which differ by sampling alone as much as DATA's
statistics differ from its population's; its pass stops once the samples it has run decide the
rule (a group-sequential test, :func:`_staged_floor`). No train-mode pass.

BN201 (:mod:`bncheck.commands.drift_small_batch`) runs the subsample with BN in train mode in
batches of ``--train-batch-size`` (one pass), or estimates it from the main pass.

Outputs of any structure (:mod:`bncheck.numerics.outputs`): batch-first, per position over the
class axis, relative error without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bncheck.backends.interface import ModelSource, Statistics
from bncheck.commands.drift_refine import (
    REFINE_PASSES,
    REFINE_TOLERANCE,
    refine,
    runner_with,
    shifted_like,
)
from bncheck.commands.drift_setting import OutputSetting, kept_moments
from bncheck.engines.measure import Measurement, array_moments
from bncheck.numerics.moments import Moments
from bncheck.numerics.outputs import (
    ComparisonParts,
    OutputComparison,
    accuracy,
    compare,
    confidence,
)
from bncheck.rules.stale_statistics import StaleStatistics

#: batch of the eval passes that need outputs only (BN301's noise floor): onnxruntime's arena
#: then holds the activations of 8 samples, not of a whole --batch-size
OUTPUTS_BATCH = 8


def population_statistics(layers, moments: dict[str, Moments]) -> Statistics:
    """Per layer with running statistics and measured input, DATA's (mean, population var)."""
    return {
        layer.name: (np.asarray(moments[layer.name].mean, np.float64), np.asarray(moments[layer.name].var, np.float64))
        for layer in layers
        if layer.has_running_stats and layer.name in moments and moments[layer.name].count > 0
    }


@dataclass
class Halves:
    """Per-layer moments of two disjoint halves of DATA (the noise floor of BN101, BN102, BN301)."""

    even: dict[str, Moments]
    odd: dict[str, Moments]
    n_even: int
    n_odd: int
    #: where they come from (for the report)
    where: str


def data_halves(runner, layers, result: Measurement, batch_size: int) -> Halves | None:
    """The even and odd batches of the main pass, or, when it had a single batch and the
    subsample is all of DATA, the even and odd samples of the subsample (measured now, one eval
    pass over it); None otherwise (an engine that keeps no halves, on more data than it keeps)."""
    if result.halves is not None:
        even, odd = result.halves
        return Halves(even, odd, _samples_of(even, result), _samples_of(odd, result), "even and odd batches of DATA")
    sub = result.subsample
    if sub is None or len(sub) != result.samples or len(sub) < 4:
        return None
    names = [layer.name for layer in layers if layer.name in result.moments]
    kept = {n: m for n, m in result.sub_moments.items() if len(m) == len(sub)}
    even = kept_moments(kept, names, slice(0, None, 2)) or array_moments(runner, sub[0::2], batch_size, names)
    odd = kept_moments(kept, names, slice(1, None, 2)) or array_moments(runner, sub[1::2], batch_size, names)
    return Halves(even, odd, len(sub[0::2]), len(sub[1::2]), "even and odd samples of DATA")


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
    """The effect and noise-floor figures (floor scaled to the noise of all of DATA)."""
    out: dict[str, Any] = effect.to_dict()
    noise: dict[str, Any] = {"relative_error": floor.relative_error * scale}
    if _by_flips(effect, floor):
        noise["top1_agreement"] = 1.0 - (floor.disagreement or 0.0) * scale
        out["flips"] = effect.flips
    out["noise_floor"] = noise
    return out


def _by_flips(effect: OutputComparison, floor: OutputComparison) -> bool:
    return effect.sample_flips is not None and floor.sample_flips is not None and bool(effect.positions)


def _per_sample(effect: OutputComparison, floor: OutputComparison, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-sample values of the effect and of the scaled floor the significance is computed
    on: flipped positions' fractions with a class axis, relative errors without."""
    if _by_flips(effect, floor):
        return effect.sample_flips / effect.positions, floor.sample_flips / effect.positions * scale
    return effect.sample_errors, floor.sample_errors * scale


def stale_statistics(
    source: ModelSource, runner, layers, result: Measurement, setting: OutputSetting, halves: Halves | None, *,
    multiple: float, ranking: list[str], reach: tuple[float, float] | None = None, max_passes: int = REFINE_PASSES,
    significance: float = 3.0,
) -> StaleStatistics | None:
    """BN301's figures: stored vs DATA's own population statistics, with the noise floor.
    ``reach``: BN301's warning thresholds (disagreement, relative error); an effect below them
    cannot fire whatever the floor, so the floor's pass is skipped, as where the refinement
    diverged (BN301 judges nothing then) (``noise_floor.measured``
    false, no significance). None: the floor is always measured. ``max_passes``: the passes
    :func:`refine` may make. ``significance``: the standard errors BN301 fires at (the floor's
    pass stops once its first samples decide that, :func:`_staged_floor`)."""  # fmt: skip
    full = population_statistics(layers, result.moments)
    if not full:
        return None
    # the subsample's moments with the stored statistics upstream: the main pass's (the subsample
    # is all of DATA), or merged from the per-sample moments it kept of the subsample
    base = {name: result.moments[name] for name in full} if len(setting.sub) == result.samples else setting.stored_moments(list(full))
    eps = {layer.name: float(layer.eps or 1e-5) for layer in layers}
    stored = {layer.name: (np.asarray(layer.running_mean, np.float64), np.asarray(layer.running_var, np.float64)) for layer in layers if layer.name in full}
    refined = refine(source, runner, full, setting, base=base, eps=eps, max_passes=max_passes, stored=stored)
    effect = compare(setting.reference, refined.outputs, setting.class_axis)
    if not refined.diverged and (reach is None or _within_reach(effect, *reach)):  # BN301 judges nothing where it diverged
        out = _with_floor(source, runner, layers, result, setting, halves, full, refined, effect, multiple, significance)
    else:
        out = {**effect.to_dict(), "noise_floor": {"measured": False}, "significance": math.nan}
        if effect.sample_flips is not None and effect.positions:
            out["flips"] = effect.flips
    out.update(
        method="population statistics",
        statistics_samples=int(result.samples),
        refinement_passes=refined.passes,
        refinement_movement=refined.movement,
        refinement_converged=refined.converged,
        refinement_tolerance=REFINE_TOLERANCE,
        refinement_method=refined.how,
        refinement_levels=refined.levels,
        batch_axis=result.batch_axis,
        class_axis=output_axis(setting.class_axis, result.batch_axis),
        noise_multiple=float(multiple),
    )
    before = accuracy(setting.reference, setting.labels, setting.class_axis)
    after = accuracy(refined.outputs, setting.labels, setting.class_axis)
    if before is not None and after is not None:
        out.update(accuracy_stored=before, accuracy_population=after)
    sure_before, sure_after = confidence(setting.reference, setting.class_axis), confidence(refined.outputs, setting.class_axis)
    if sure_before is not None and sure_after is not None:
        out.update(confidence_stored=sure_before, confidence_population=sure_after)
    out["top_layers"] = [name for name in ranking if name in full][:5]
    return StaleStatistics.from_dict(out)  # the figures gathered by key above, typed once


def output_axis(per_sample_axis: int | None, batch_axis: int | None) -> int | None:
    """The class axis of the model's output as ``--class-axis`` counts it (the batch axis
    included) from the axis of the per-sample output (the batch axis taken out): (N, C) class
    axis 0 per sample is the output's axis 1; (T, N, C) axis 1 per sample is the output's 2."""
    if per_sample_axis is None:
        return None
    batch = batch_axis or 0
    return per_sample_axis if per_sample_axis < batch else per_sample_axis + 1


#: without labels, a top-1 agreement below this makes the report say that the output may hold
#: no class scores (a re-identification embedder's 1,280 features agreed 0.0%)
CLASS_AXIS_HINT_BELOW = 0.5


def class_axis_note(figures: StaleStatistics | None) -> str | None:
    """The report's note where BN301 compared top-1 predictions without labels and found them
    to agree less than :data:`CLASS_AXIS_HINT_BELOW`: an output that is an embedding or features,
    not class scores, is compared by relative error with ``--class-axis none`` (None otherwise)."""
    if figures is None or figures.accuracy_stored is not None or figures.top1_agreement is None:
        return None
    if not figures.top1_agreement < CLASS_AXIS_HINT_BELOW:
        return None
    axis = f"axis {figures.class_axis}" if figures.class_axis is not None else "its class axis"
    return (
        f"BN201/BN301 take top-1 predictions over the output's {axis} (top-1 agreement {figures.top1_agreement:.1%}); "
        "if that axis holds no class scores (an embedding, features), `--class-axis none` compares the outputs by relative error"
    )


def _within_reach(effect: OutputComparison, disagreement: float, rel_err: float) -> bool:
    """Whether the effect reaches BN301's warning threshold (as the rule reads it)."""
    if effect.agreement is not None:
        return 1.0 - effect.agreement >= disagreement
    return effect.relative_error >= rel_err


def _with_floor(
    source, runner, layers, result: Measurement, setting: OutputSetting, halves, full: Statistics, refined, effect,
    multiple: float, needed: float,
) -> dict[str, Any]:  # fmt: skip
    """The effect's figures with the noise floor (an eval pass over the subsample with the
    statistics of half of DATA, in stages: :func:`_floor_stages`) and the significance of the
    effect beyond it; ``needed``: the significance BN301 fires at."""
    if halves is None:  # no halves of DATA: half of the subsample (kept by the main pass, or measured now), scaled
        even = setting.stored_moments(list(full), slice(0, None, 2)) or array_moments(runner, setting.sub[0::2], setting.batch_size, list(full))
        half = population_statistics(layers, even)
        n_half, where = len(setting.sub[0::2]), "even samples of the subsample"
    else:
        half, n_half, where = population_statistics(layers, halves.even), halves.n_even, halves.where
    scale = floor_scale(result.samples, n_half)
    floor, t, compared = _staged_floor(source, runner, setting, shifted_like(half, full, refined.statistics, {layer.name: float(layer.eps or 1e-5) for layer in layers}), refined.outputs, scale, multiple, needed)
    out = _figures(effect, floor, scale)
    out["significance"] = t
    out["noise_floor"].update(measured=True, halves=where, half_samples=int(n_half), scale=scale, samples=compared)
    return out


#: the noise floor's pass runs the subsample's samples in a fixed random order, in stages that
#: end after FLOOR_STAGE, 2 x FLOOR_STAGE, 4 x ... samples and at the last, and stops after a
#: stage whose samples already decide BN301 (a group-sequential test): where the effect on them
#: lies below ``noise_multiple`` x the floor by so much that the rest cannot carry it to the
#: significance the rule needs (t < significance - FUTILITY_MARGIN: 0 at the defaults; stopping
#: there only ever silences the rule, so it adds no false alarm), or beyond it by so much
#: (t >= significance + EFFICACY_MARGIN: 6 at the defaults, odds below 1e-7 on data the
#: statistics fit) that the rest cannot undo it. The random-init ResNet-18 of
#: bench/drift_speed.py on its own kind of data (10.5% disagreement against a floor of 9.1%)
#: is decided after 64 of its 256 samples: a quarter of the pass
FLOOR_STAGE = 64
FUTILITY_MARGIN = 3.0
EFFICACY_MARGIN = 3.0


def _floor_stages(n: int) -> list[int]:
    """The numbers of samples after which the floor's pass may stop, the last ``n``."""
    stops, k = [], FLOOR_STAGE
    while k < n:
        stops.append(k)
        k *= 2
    return [*stops, n]


def _staged_floor(source, runner, setting: OutputSetting, stats: Statistics, refined: np.ndarray, scale: float, multiple: float, needed: float):
    """The floor (``refined`` against the outputs with ``stats``) on the samples its stages
    ran, the effect's significance beyond it on the same samples, and their number."""
    n = len(setting.sub)
    order = np.random.default_rng(0).permutation(n)  # the subsample's slots follow DATA's order in part
    size = min(setting.batch_size, OUTPUTS_BATCH)  # the plain session's arena grows to its largest batch
    floor_parts, effect_parts, done = [], [], 0
    with runner_with(source, stats, runner, []) as run:
        for stop in _floor_stages(n):
            rows = np.sort(order[done:stop])
            for start in range(0, len(rows), size):
                batch = rows[start : start + size]
                out = np.asarray(run.forward(np.ascontiguousarray(setting.sub[batch])))
                floor_parts.append(ComparisonParts.of(refined[batch], out, setting.class_axis))
                effect_parts.append(ComparisonParts.of(setting.reference[batch], refined[batch], setting.class_axis))
            done = stop
            floor = ComparisonParts.join(floor_parts).comparison()
            t = excess_t(*_per_sample(ComparisonParts.join(effect_parts).comparison(), floor, scale), multiple)
            if done < n and (t < needed - FUTILITY_MARGIN or t >= needed + EFFICACY_MARGIN):
                break
    return floor, t, done


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
