"""The output analyses of ``bncheck drift``: BN301 (what the stored statistics do to the outputs
on this data) and BN201 (what normalising with the statistics of small batches does), and the
split halves of DATA that give BN101, BN102 and BN301 their noise floor.

BN301 compares, on the kept subsample, the model normalised with its stored running statistics
(the main pass's eval outputs, reused) with the same model normalised with DATA's own population
statistics, what ``recalibrate --method exact`` writes: the per-layer moments of the main pass
(each layer measured with the layers before it on their stored statistics: a one-pass
approximation) refined on the subsample until every layer's statistics are those it sees once
the layers before it use DATA's statistics too (:func:`refine`; one pass where the statistics
fit, otherwise one level-by-level pass and a pass measuring the residual). Its noise floor is the same comparison between the statistics of
one half of DATA (the even batches of the main pass) and of all of it, which differ by sampling
alone as much as DATA's statistics differ from its population's. No train-mode pass.

BN201 (:mod:`bncheck.commands.drift_small_batch`) runs the subsample with BN in train mode in
batches of ``--train-batch-size`` (one pass), or estimates it from the main pass.

Outputs of any structure (:mod:`bncheck.numerics.outputs`): batch-first, per position over the
class axis, relative error without one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from bncheck.backends.interface import ModelSource, Statistics
from bncheck.backends.load import backend_for
from bncheck.commands.recalibrate_staged import estimate_staged
from bncheck.engines.measure import Measurement, add_bounded, array_moments, output_class_axis
from bncheck.numerics.moments import Moments, SampleMoments, merge_all
from bncheck.numerics.outputs import OutputComparison, accuracy, compare, confidence
from bncheck.numerics.recalibration import relative_change
from bncheck.rules.stale_statistics import StaleStatistics

#: memory the level-by-level pass may keep of the values between levels (beyond it, batches are
#: run again from the subsample through the levels before)
STAGED_CACHE_MB = 256.0
#: fewest samples of the subsample the level-by-level pass runs on (more where they fit half
#: of STAGED_CACHE_MB, see _staged_samples), in batches of at most STAGED_BATCH: its values
#: between levels (a ResNet-18 at 224 x 224: 3.2 MB per sample at the first cut) then stay in
#: the cache and each level opens one segment of the model at a time
STAGED_SAMPLES = 32
STAGED_BATCH = 16
#: batch of the eval passes that need outputs only (BN301's noise floor): onnxruntime's arena
#: then holds the activations of 8 samples, not of a whole --batch-size
OUTPUTS_BATCH = 8
#: how little a pass may move DATA's statistics for them to have settled (see :func:`refine`)
REFINE_TOLERANCE = 0.02
#: passes :func:`refine` may make by default (``DriftOptions.refinement_passes``)
REFINE_PASSES = 6


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
    #: layer -> the per-sample eval-mode (stored statistics) moments of ``sub``, kept by the
    #: main pass (layers its runner gave none for are missing)
    sub_moments: dict[str, SampleMoments] = field(default_factory=dict)

    def stored_moments(self, names: list[str], index=slice(None)) -> dict[str, Moments] | None:
        """See :func:`kept_moments`."""
        return kept_moments(self.sub_moments, names, index)


def kept_moments(sub_moments: dict[str, SampleMoments], names: list[str], index=slice(None)) -> dict[str, Moments] | None:
    """The eval-mode moments of the subsample's samples ``index`` for every layer of ``names``,
    merged from the main pass's per-sample moments; None when some layer has none (then a pass
    over the samples measures them)."""
    kept = {name: sub_moments[name].take(index) for name in names if name in sub_moments}
    if len(kept) < len(names) or any(len(m) == 0 for m in kept.values()):
        return None
    return {name: m.merged() for name, m in kept.items()}


def output_setting(result: Measurement, samples: int, class_axis: int | str, batch_size: int) -> OutputSetting | None:
    """The subsample of the main pass (its first ``samples``) and how to compare its outputs;
    None when the pass kept none or the model's outputs have no batch axis."""
    if result.subsample is None or result.sub_outputs is None or samples <= 0:
        return None
    ref = result.sub_outputs[:samples]
    if ref.ndim < 1 or ref.size == 0:
        raise ValueError(
            "the model's first output has no axis that follows the batch size, or its per-sample shape changes between batches, "
            "so outputs cannot be compared per sample"
        )
    labels = result.sub_labels[:samples] if result.sub_labels is not None else None
    axis = output_class_axis(ref, class_axis, result.batch_axis)
    kept = {name: m.take(slice(0, len(ref))) for name, m in result.sub_moments.items() if len(m) == len(result.subsample)}
    return OutputSetting(result.subsample[:samples], ref, labels, axis, batch_size, kept)


def population_statistics(layers, moments: dict[str, Moments]) -> Statistics:
    """Per layer with running statistics and measured input, DATA's (mean, population var)."""
    return {
        layer.name: (np.asarray(moments[layer.name].mean, np.float64), np.asarray(moments[layer.name].var, np.float64))
        for layer in layers
        if layer.has_running_stats and layer.name in moments and moments[layer.name].count > 0
    }


@contextmanager
def runner_with(source: ModelSource, stats: Statistics, runner, layers: list[str]) -> Iterator[Any]:
    """A runner of ``source`` carrying ``stats``: the main pass's ``runner`` itself with the
    statistics swapped into the model in place (torch modules: no copy of the model, no new
    runner; restored on exit), or one of a copy of ``source`` (ONNX, torch.export, no runner)."""
    backend = backend_for(source)
    in_place = backend.statistics_in_place(source, stats) if runner is not None else None
    if in_place is not None:
        with in_place:
            yield runner
        return
    copy = backend.with_statistics(source, stats)
    copy.device = source.device  # the copy runs where the model runs (--device)
    with copy.runner(layers=layers) as own:
        yield own


def outputs_with(source: ModelSource, stats: Statistics, x: np.ndarray, batch_size: int, runner=None) -> np.ndarray:
    """Eval-mode outputs of ``x`` (batch-first) from ``source`` carrying ``stats`` (see
    :func:`runner_with`)."""
    size = min(batch_size, OUTPUTS_BATCH)  # the plain session's arena grows to its largest batch
    with runner_with(source, stats, runner, []) as run:
        return np.concatenate([run.forward(x[i : i + size]) for i in range(0, len(x), size)])


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
    source: ModelSource, runner, layers, result: Measurement, setting: OutputSetting, halves: Halves | None, *,
    multiple: float, ranking: list[str], reach: tuple[float, float] | None = None, max_passes: int = REFINE_PASSES,
) -> StaleStatistics | None:
    """BN301's figures: stored vs DATA's own population statistics, with the noise floor.
    ``reach``: BN301's warning thresholds (disagreement, relative error); an effect below them
    cannot fire whatever the floor, so the floor's pass is skipped (``noise_floor.measured``
    false, no significance). None: the floor is always measured. ``max_passes``: the passes
    :func:`refine` may make."""  # fmt: skip
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
    if reach is None or _within_reach(effect, *reach):
        out = _with_floor(source, runner, layers, result, setting, halves, full, refined, effect, multiple)
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
        class_axis=setting.class_axis,
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


def _within_reach(effect: OutputComparison, disagreement: float, rel_err: float) -> bool:
    """Whether the effect reaches BN301's warning threshold (as the rule reads it)."""
    if effect.agreement is not None:
        return 1.0 - effect.agreement >= disagreement
    return effect.relative_error >= rel_err


def _with_floor(source, runner, layers, result: Measurement, setting: OutputSetting, halves, full: Statistics, refined, effect, multiple: float) -> dict[str, Any]:
    """The effect's figures with the noise floor (one eval pass over the subsample with the
    statistics of half of DATA) and the significance of the effect beyond it."""
    if halves is None:  # no halves of DATA: half of the subsample (kept by the main pass, or measured now), scaled
        even = setting.stored_moments(list(full), slice(0, None, 2)) or array_moments(runner, setting.sub[0::2], setting.batch_size, list(full))
        half = population_statistics(layers, even)
        n_half, where = len(setting.sub[0::2]), "even samples of the subsample"
    else:
        half, n_half, where = population_statistics(layers, halves.even), halves.n_even, halves.where
    halved = outputs_with(source, shifted_like(half, full, refined.statistics), setting.sub, setting.batch_size, runner)
    floor = compare(refined.outputs, halved, setting.class_axis)
    scale = floor_scale(result.samples, n_half)
    out = _figures(effect, floor, scale)
    per_effect, per_floor = out.pop("_per_sample")
    out["significance"] = excess_t(per_effect, per_floor, multiple)
    out["noise_floor"].update(measured=True, halves=where, half_samples=int(n_half), scale=scale)
    return out


@dataclass
class Refined:
    """DATA's population statistics as BN301 uses them, and the subsample's outputs with them."""

    statistics: Statistics
    outputs: np.ndarray
    #: passes over the subsample: eval passes of the whole model, and the level-by-level one
    passes: int
    #: the largest change between ``statistics`` and what the last eval pass measured with them
    #: (per channel, mean in standard deviations and variance relative, both with the layer's eps)
    movement: float
    #: whether ``movement`` reached the tolerance within the passes allowed
    converged: bool = True
    #: how the statistics were reached: "one pass", "level by level" or "fixed-point passes"
    how: str = "one pass"
    #: BN levels of the level-by-level pass (0 without one)
    levels: int = 0
    #: why the model could not be run level by level (empty when it was, or did not need to be)
    unstaged: str = ""


def refine(
    source: ModelSource, runner, full: Statistics, setting: OutputSetting, *, base: dict[str, Moments] | None = None,
    eps: dict[str, float] | None = None, max_passes: int = REFINE_PASSES, tolerance: float = REFINE_TOLERANCE,
    stored: Statistics | None = None,
) -> Refined:  # fmt: skip
    """DATA's statistics with every layer measured as it is once the layers before it use DATA's
    statistics too: the fixed point of ``recalibrate --method exact``, moved onto all of DATA.

    With ``s`` the statistics and ``F(s)`` the subsample's moments with the model carrying
    ``s``, the fixed point is ``s = full + (F(s) - base)`` per channel (means by the
    difference, variances by the ratio; ``base`` = ``F(stored)``, measured here when not
    given; when the subsample is all of DATA, ``s = F(s)``). A layer's ``F`` depends only on
    the layers before it, so the system is triangular: the first eval pass checks ``full``
    (on data the statistics fit it already holds and one pass is all), then one level-by-level
    pass (:func:`~bncheck.commands.recalibrate_staged.estimate_staged`, the machinery of
    ``recalibrate --method exact``: each BN level measured with every level before it final,
    about one forward pass in all) solves it, and a last eval pass measures the residual
    and gives the outputs. A model that cannot be cut is iterated with whole-model passes
    instead, which settle one more BN level each (as many passes as the deepest chain of BN
    layers). It stops when a pass moves the statistics by less than ``tolerance`` (mean in
    channel standard deviations, variance relative, both with the layer's eps, as
    ``recalibrate`` measures it) or after ``max_passes`` passes, the level-by-level one
    counted: then ``converged`` is false and the statistics and outputs are those of the last
    eval pass. ``stored``: the stored statistics; where ``full`` differs from them by more than
    ``tolerance`` somewhere, the first eval pass could hardly settle and the level-by-level pass
    comes first (its result checked by the eval pass that follows, as always)."""
    names = list(full)
    eps = eps or {}
    if base is None:
        base = array_moments(runner, setting.sub, setting.batch_size, names)
    before = {n: (base[n].mean, base[n].var) for n in names if n in base}
    stats, passes, how, levels, unstaged = full, 0, "one pass", 0, ""
    if stored is not None and max_passes >= 2 and _movement(stored, full, eps) >= tolerance:
        staged, levels, unstaged = level_by_level(source, full, before, setting, names)
        if staged is not None:
            stats, how, passes = staged, "level by level", 1
    best: Refined | None = None
    while True:
        out, moments = pass_with(source, runner, stats, setting, names)
        passes += 1
        new = shifted_like(full, before, {n: (moments[n].mean, moments[n].var) for n in names if n in moments})
        move = _movement(stats, new, eps)
        if move < tolerance or passes >= max_passes:
            return Refined(stats, out, passes, move, move < tolerance, how, levels, unstaged)
        if best is not None and how == "fixed-point passes" and move >= best.movement:
            # whole-model passes that move the statistics more than the pass before diverge
            # (a random-init ResNet-18 went 0.14, 0.58, 1.6, 3.1 ...): the least-moved
            # statistics and their outputs stand, unsettled (a note; BN301 at most warns)
            return replace(best, passes=passes, converged=False, how="fixed-point passes (diverging: stopped)", unstaged=unstaged)
        if best is None or move < best.movement:
            best = Refined(stats, out, passes, move, False, how, levels, unstaged)
        if passes == 1 and how == "one pass" and not unstaged and passes + 1 < max_passes:
            staged, levels, unstaged = level_by_level(source, full, before, setting, names)
            if staged is not None:
                stats, how, passes = staged, "level by level", passes + 1
                continue
        stats, how = new, "fixed-point passes" if how == "one pass" else how


def refinement_note(figures: StaleStatistics | None) -> str | None:
    """The report's note when BN301's statistics did not settle (None when they did)."""
    if figures is None or figures.refinement_converged is not False:
        return None
    return (
        f"BN301: DATA's population statistics did not settle in {figures.refinement_passes} pass(es) over the subsample "
        f"(last movement {figures.refinement_movement:.3g}, tolerance {figures.refinement_tolerance:g}); "
        "its figures are approximate and it reports at most a warning"
    )


class _Subsample:
    """The subsample (an array, or a :class:`~bncheck.numerics.rows.RowsView` of a file-kept
    one: read a batch at a time) as the data session ``estimate_staged`` reads."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.num_samples = len(x)

    def batches(self, batch_size: int, split=None, samples=None):
        for i in range(0, len(self.x), batch_size):
            yield SimpleNamespace(x=np.asarray(self.x[i : i + batch_size]))


def level_by_level(source: ModelSource, full: Statistics, before: Statistics, setting: OutputSetting, names: list[str]) -> tuple[Statistics | None, int, str]:
    """The fixed point of :func:`refine` from one level-by-level pass over the first samples of
    the subsample (:func:`_staged_samples`; each level's moments moved onto all of
    DATA, as those samples' moments with the stored statistics moved, before the next level is
    measured), its number of levels; or (None, 0, why the model cannot be cut). The move is a
    difference on the same samples, so a few dozen give it to well within the tolerance the
    last eval pass then checks on the whole subsample. ``before``: the whole subsample's moments
    with the stored statistics, used (with the whole subsample) where the main pass kept no
    per-sample moments to take those samples' from."""
    staged, why = backend_for(source).staged(source, names)
    if staged is None:
        return None, 0, why
    k = _staged_samples(setting, names)
    base = setting.stored_moments(names, slice(0, k)) if k < len(setting.sub) else None
    if base is None:  # the whole subsample, whose moments with the stored statistics are known
        k = len(setting.sub)
    else:
        before = {n: (base[n].mean, base[n].var) for n in names if n in base}
    sub = setting.sub[:k]
    options = SimpleNamespace(batch_size=min(setting.batch_size, STAGED_BATCH), cache_mb=STAGED_CACHE_MB, prior=0.0)
    with staged:
        done = estimate_staged(
            staged, _Subsample(sub), options, None, None, full, lambda m: (m.mean.copy(), m.var.copy()),
            adjust=lambda level: shifted_like({n: full[n] for n in level}, {n: before[n] for n in level if n in before}, level),
        )  # fmt: skip
    return {n: done.stats.get(n, full[n]) for n in names}, staged.plan.depth, ""


def _staged_samples(setting: OutputSetting, names: list[str]) -> int:
    """Samples of the subsample the level-by-level pass runs on: as many as keep the largest BN
    input of all of them within half of :data:`STAGED_CACHE_MB` (the values between two levels
    then stay in the cache), at least :data:`STAGED_SAMPLES`; all of them where the main pass
    kept no per-sample moments to tell the size by."""
    sizes = [int(m.counts[0]) * m.means.shape[1] * 4 for n in names if (m := setting.sub_moments.get(n)) is not None and len(m)]
    if not sizes:
        return len(setting.sub)
    fits = int(STAGED_CACHE_MB * (1 << 20) / 2) // max(sizes)
    return min(len(setting.sub), max(STAGED_SAMPLES, fits))


def shifted_like(target: Statistics, before: Statistics, after: Statistics) -> Statistics:
    """``target`` moved as ``before`` moved to ``after``: means by the difference, variances by
    the ratio (layers missing from ``before``/``after`` are kept)."""
    out = {}
    for name, (mean, var) in target.items():
        if name in before and name in after:
            (m0, v0), (m1, v1) = before[name], after[name]
            ratio = np.where(np.asarray(v0) > 0, np.asarray(v1, np.float64) / np.where(np.asarray(v0) > 0, v0, 1.0), 1.0)
            out[name] = (np.asarray(mean, np.float64) + (np.asarray(m1, np.float64) - m0), np.asarray(var, np.float64) * ratio)
        else:
            out[name] = (mean, var)
    return out


def _movement(old: Statistics, new: Statistics, eps: dict[str, float]) -> float:
    """The largest per-channel change from ``old`` to ``new`` over every layer, as
    ``recalibrate`` measures it (:func:`~bncheck.numerics.recalibration.relative_change`: the
    eps keeps channels of near-zero variance from blowing it up)."""
    return max((relative_change(old[name], values, float(eps.get(name) or 1e-5)) for name, values in new.items()), default=0.0)


def pass_with(source: ModelSource, runner, stats: Statistics, setting: OutputSetting, names: list[str]) -> tuple[np.ndarray, dict[str, Moments]]:
    """Outputs and per-layer input moments of the subsample from ``source`` carrying ``stats``
    (see :func:`runner_with`)."""
    outs, parts = [], {}
    with runner_with(source, stats, runner, names) as run:
        for i in range(0, len(setting.sub), setting.batch_size):
            out, moments = run.moments(setting.sub[i : i + setting.batch_size])
            outs.append(out)
            add_bounded(parts, {name: moments[name] for name in names if name in moments})
    return np.concatenate(outs), {name: merge_all(ms) for name, ms in parts.items()}


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
