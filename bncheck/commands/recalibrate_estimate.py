"""The estimators of ``bncheck recalibrate`` (``--method exact|cumulative|ema``), each over the
session's DATA without the held-out split, optionally stopping once ``--precision`` is reached,
and blended with the stored statistics by ``--prior`` (see :mod:`bncheck.numerics.recalibration`).

Each returns an :class:`Estimate`: the statistics to write, the samples and batches they rest
on, one record per pass, the pooled moments of the first pass (what the "before" figures
compare the stored statistics with) and, for ``exact``, the measurement of the last pass,
which *is* the written model on DATA (the "after" figures, with no pass of their own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bncheck.backends.interface import ModelSource, Statistics
from bncheck.backends.load import backend_for
from bncheck.commands.progress import step
from bncheck.commands.recalibrate_staged import estimate_staged
from bncheck.engines import PassRequest
from bncheck.engines.measure import Measurement, add_bounded
from bncheck.errors import DataError
from bncheck.numerics.moments import Moments, merge_all
from bncheck.numerics.recalibration import PrecisionTracker, blend, relative_change
from bncheck.report.stats_checks import check_measured

#: the "before" figures' basis, by the pass ``Estimate.first`` comes from
TRAIN_BASIS = "the stored statistics against DATA's in the train-mode pass (batch statistics in every layer before)"
STAGED_BASIS = (
    "the stored statistics against DATA's, each layer's input measured with the layers before it recalibrated "
    "(the statistics written; bncheck drift measures each layer with the stored ones before it)"
)
EVAL_BASIS = "the stored statistics against DATA's, the model as stored (as bncheck drift measures them)"


@dataclass
class Estimate:
    stats: Statistics
    samples: int
    batches: int | None
    passes: list[dict[str, Any]]
    #: pooled per-layer moments of the first pass over DATA (train mode: batch statistics upstream)
    first: dict[str, Moments]
    #: exact: the last eval pass, the written model's BN inputs on DATA (None otherwise)
    last: Measurement | None = None
    #: exact: whether the fixed point met the tolerance within --max-passes
    converged: bool | None = None
    #: --precision: the half-widths reached ({"mean", "variance", "layer"}), else None
    precision: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    #: what ``first`` measured each layer's input with upstream: the report's "before" basis
    first_basis: str = TRAIN_BASIS


def population(m: Moments, variance: str) -> tuple[np.ndarray, np.ndarray]:
    return m.mean.copy(), (m.unbiased_var if variance == "unbiased" else m.var).copy()


def _stored(layers: dict, names: list[str]) -> Statistics:
    return {n: (np.asarray(layers[n].running_mean, np.float64), np.asarray(layers[n].running_var, np.float64)) for n in names}


def _blended(measured: Statistics, stored: Statistics, prior: float, samples: int) -> Statistics:
    return {n: blend(stored[n], v, prior, samples) for n, v in measured.items()}


def check_estimable(moments: dict[str, Moments], names: list[str], samples: int, split) -> None:
    """DataError, before anything is written, when the samples an estimate rests on leave a
    layer of ``names`` fewer than 2 values per channel: it has no variance to estimate (DATA too
    small, the held-out split took what there was, or a train-mode pass had no batch of 2)."""
    counts = {n: int(moments[n].count) if n in moments else 0 for n in names}
    thin = next((n for n in names if counts[n] < 2), None)
    if thin is None:
        return
    held = getattr(split, "held", 0)
    kept = f" ({held} more held out for the check; --holdout 0 estimates on all of DATA)" if held else ""
    if not held and samples == 0:
        kept = " (a train-mode pass reads batches of 2 or more samples)"
    raise DataError(
        f"DATA is too small to estimate the statistics: the estimate rests on {samples} of its samples{kept}, which give BN layer "
        f"{thin} {counts[thin]} value(s) per channel, and a variance needs at least 2; give more DATA."
    )


def tracker(source: ModelSource, tolerance: float | None) -> PrecisionTracker:
    return PrecisionTracker(tolerance, eps={la.name: float(la.eps or 1e-5) for la in source.bn_layers()})


def _train_stream(source: ModelSource, session, names: list[str], options, split, until: PrecisionTracker | None):
    """Per train-mode batch, (samples, moments of the layers of ``names`` with 2+ elements per
    channel); batches of one sample are skipped. Raises when no batch had 2 samples."""
    batches = 0
    advance = step(f"{options.method}: train-mode batches in order", total=session.num_samples)
    with source.runner(layers=names) as runner:
        for batch in session.batches(options.batch_size, split=split):
            if advance is not None:
                advance(len(batch.x))
            if len(batch.x) < 2:
                continue
            _, moments = runner.train_moments(batch.x)
            batches += 1
            yield len(batch.x), {n: moments[n] for n in names if moments[n].count >= 2}
            if until is not None:
                until.add(moments, len(batch.x))
                if until.done:
                    break
    if batches == 0:
        held = getattr(split, "held", 0)
        kept = f" ({held} held out for the check; --holdout 0 estimates on all of DATA)" if held else ""
        raise DataError(f"no batch of at least 2 samples to estimate on{kept}: use more data or a larger --batch-size.")


def estimate_in_order(source: ModelSource, session, names: list[str], options, split) -> Estimate:
    """``cumulative`` (= ``update_bn``: equal-weight averages of batch means and unbiased batch
    variances) or ``ema`` (momentum updates from the stored statistics), batch after batch."""
    layers = {layer.name: layer for layer in source.bn_layers()}
    stored = _stored(layers, names)
    until = tracker(source, options.precision) if options.precision else None
    sums: dict[str, list] = {}
    state = {n: (stored[n][0].copy(), stored[n][1].copy()) for n in names}
    rates = {n: pytorch_momentum(layers[n], options.momentum) for n in names}
    parts: dict[str, list[Moments]] = {}
    batches = samples = 0
    for size, usable in _train_stream(source, session, names, options, split, until):
        batches += 1
        samples += size
        add_bounded(parts, usable)
        for n, m in usable.items():
            if options.method == "ema":
                mean, var = state[n]
                state[n] = ((1 - rates[n]) * mean + rates[n] * m.mean, (1 - rates[n]) * var + rates[n] * m.unbiased_var)
                continue
            total = sums.setdefault(n, [np.zeros_like(m.mean), np.zeros_like(m.mean), 0])
            total[0] += m.mean
            total[1] += m.unbiased_var
            total[2] += 1
    if options.method == "cumulative":
        state = {n: (s[0] / s[2], s[1] / s[2]) for n, s in sums.items()}
        state = _blended(state, stored, options.prior, samples)
    first = {n: merge_all(ms) for n, ms in parts.items()}
    return Estimate(
        stats=state, samples=samples, batches=batches, passes=[{"pass": 1, "mode": "train", "movement": None}], first=first,
        precision=until.reached() if until is not None else None,
    )  # fmt: skip


def pytorch_momentum(layer, override: float | None) -> float:
    if override is not None:
        return float(override)
    m = layer.momentum
    if m is None:
        return 0.1
    if layer.momentum_convention == "onnx":
        m = 1.0 - m
    return float(m) if 0 < m <= 1 else 0.1


def _movement(old: Statistics, new: Statistics, layers) -> float:
    """The largest per-channel change between two estimates over every layer (mean in channel
    standard deviations, variance relative)."""
    worst = 0.0
    for n, values in new.items():
        if n not in old:
            return float("inf")
        worst = max(worst, relative_change(old[n], values, float(layers[n].eps or 1e-5)))
    return worst


def estimate_exact(source: ModelSource, session, names: list[str], options, split) -> Estimate:
    """The eval-mode fixed point: every layer's statistics are (the ``--prior`` blend of) those
    of its input in eval mode with every layer before it recalibrated.

    One train-mode pass gives every layer a starting estimate (its input's statistics when the
    layers before it normalise with batch statistics, which differ from the final ones only by
    batch noise) and, with ``--precision``, decides how many samples the passes read. Then each
    eval-mode pass runs the model with the current estimate ``s`` and measures what its layers
    see, ``F(s)``; it stops when ``blend(F(s))`` is within ``tolerance`` of ``s`` on every
    channel of every layer (mean in channel standard deviations, variance relative) and writes
    ``s``: the model with ``s`` was *measured* to see ``F(s)``, so the written statistics equal
    what the written model's layers see to ``tolerance``, with no assumption about how the
    iteration converges. A pass settles at least the next layer of every dependency chain and
    parallel branches settle together, so it needs at most the depth of the deepest chain.
    With ``--layers`` (not every layer) the iteration starts from the stored statistics.
    """
    layers = {layer.name: layer for layer in source.bn_layers()}
    stored = _stored(layers, names)
    history: list[dict[str, Any]] = []
    all_layers = [layer.name for layer in source.bn_layers() if layer.has_running_stats]
    until = tracker(source, options.precision) if options.precision else None
    first: dict[str, Moments] = {}
    basis = TRAIN_BASIS
    samples_cap = None
    samples = 0
    staged, why = _staged(source, session, names)
    if (options.precision or staged is None) and set(names) >= set(all_layers) and options.batch_size >= 2:
        advance = step("pass 1: train-mode statistics", total=session.num_samples)
        merged = session.measure(PassRequest(names, options.batch_size, mode="train", split=split, until=until), on_batch=advance)
        check_measured(merged.moments)
        check_estimable(merged.moments, names, merged.samples, split)
        first = merged.moments
        samples_cap = merged.samples if until is not None else None
        samples = merged.samples
        measured = {n: population(m, options.variance) for n, m in merged.moments.items() if n in names and m.count}
        stats = _blended(measured, stored, options.prior, merged.samples)
        history.append({"pass": 1, "mode": "train", "movement": None})
    elif staged is None:
        stats = {n: (stored[n][0].copy(), stored[n][1].copy()) for n in names}
    notes = [] if staged is not None else [f"exact: whole-model passes until the estimate settles ({why})"]
    if staged is not None:
        with staged:
            done = estimate_staged(staged, session, options, split, samples_cap, stored, lambda m: population(m, options.variance))
        check_estimable(done.moments, names, done.samples, split)
        stats = {n: done.stats.get(n, stored[n]) for n in names}
        if not first:
            first, basis = done.moments, STAGED_BASIS
        samples = done.samples
        history.append({"pass": len(history) + 1, "mode": "staged", "movement": None, **done.record})
    last, converged = None, False
    while len(history) < options.max_passes:
        watch = tracker(source, None) if until is not None else None
        request = PassRequest(
            names, options.batch_size, statistics=stats, split=split, samples=samples_cap, until=watch, keep_predictions=True
        )
        advance = step(f"pass {len(history) + 1}: what the model with the estimate sees", total=session.num_samples)
        result = session.measure(request, on_batch=advance)  # the model with `stats`
        check_measured(result.moments)
        check_estimable(result.moments, names, result.samples, split)
        if not first:  # the first pass runs the stored statistics (`stats` starts as them)
            first, basis = result.moments, EVAL_BASIS
        seen = {n: population(result.moments[n], options.variance) for n in names if result.moments[n].count}
        new = _blended(seen, stored, options.prior, result.samples)
        moved = _movement(stats, new, layers)
        history.append({"pass": len(history) + 1, "mode": "eval", "movement": moved})
        last, until, samples = result, watch or until, result.samples
        if moved <= options.tolerance:
            converged = True
            break
        stats = new
    if not converged:
        last = None  # `stats` is the newest estimate, not the one the last pass ran with
    return Estimate(
        stats=stats, samples=samples, batches=-(-samples // options.batch_size), passes=history, first=first, last=last,
        converged=converged, precision=until.reached() if until is not None else None, notes=notes, first_basis=basis,
    )  # fmt: skip


def _staged(source: ModelSource, session, names: list[str]):
    """The model cut into level segments (:mod:`bncheck.commands.recalibrate_staged`), or
    (None, why not): the engine must read DATA in this process, the backend must cut it."""
    if not hasattr(session, "batches"):
        return None, "the engine's passes do not run in this process"
    return backend_for(source).staged(source, names)
