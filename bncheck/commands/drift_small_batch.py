"""BN201's analysis in ``bncheck drift``: how far the statistics of batches of
``--train-batch-size`` scatter around the population statistics and how the outputs change
with BN in train mode at that batch size, from one train-mode pass over the subsample, or,
where the scatter estimated from the per-sample moments the main pass kept is far below
BN201's threshold (the rule cannot fire there), from that estimate alone."""

from __future__ import annotations

import math

import numpy as np

from bncheck.commands.drift_setting import OutputSetting
from bncheck.numerics import drift as metrics
from bncheck.numerics.moments import Moments, merge_all
from bncheck.numerics.outputs import ComparisonParts
from bncheck.rules.context import BatchScatter, SmallBatchRisk

#: BN201's train-mode pass is skipped when the batch-mean scatter estimated from the main pass
#: is below this fraction of the rule's ``mean_scatter`` threshold in every layer: the pass
#: measured at most 1.03x the estimate's worst layer (at most 1.8x a single layer's) on the
#: sample, bench and real models (``tests/commands/test_drift_small_batch.py``), so there the
#: rule, which needs the scatter above the threshold, cannot fire
SKIP_SCATTER_FRACTION = 0.5


def estimated_scatter(layers, setting: OutputSetting, batch_size: int, observed: list[str]) -> dict[str, BatchScatter] | None:
    """Per layer of ``observed``, the scatter of the statistics of the subsample's full batches
    of ``batch_size`` around the subsample's own, from the per-sample eval-mode moments the
    main pass kept (no pass): what BN201's train-mode pass measures, up to the layers before
    each normalising with their batch's statistics instead of the stored ones there (its error
    is measured in ``tests/commands/test_drift_small_batch.py``).
    None when some layer has no kept moments or the subsample holds fewer than two batches."""
    batches = len(setting.sub) // batch_size
    if batches < 2 or batch_size < 2:
        return None
    per_layer: dict[str, list[Moments]] = {}
    for name in observed:
        kept = setting.sub_moments.get(name)
        if kept is None or len(kept) < batches * batch_size:
            return None
        per_layer[name] = [kept.take(slice(k * batch_size, (k + 1) * batch_size)).merged() for k in range(batches)]
    out: dict[str, BatchScatter] = {}
    _worst_scatter(layers, per_layer, batches, out)
    return out


def small_batch_risk(layers, runner, setting: OutputSetting, batch_size: int, skip_below: float | None = None) -> SmallBatchRisk | None:
    """BN201: scatter of size-B batch statistics around the population statistics and how the
    outputs change, from one train-mode pass over the subsample in full batches of B.
    ``skip_below``: when every layer's batch-mean scatter estimated from the main pass
    (:func:`estimated_scatter`) is below it, the pass is skipped and the estimate is the
    evidence (``train_pass`` false, no output figures): drift passes BN201's ``mean_scatter``
    threshold times :data:`SKIP_SCATTER_FRACTION`, where the rule cannot fire."""
    if skip_below is not None:
        estimate = estimated_scatter(layers, setting, batch_size, list(runner.layers))
        if estimate and max(sc.mean_scatter for sc in estimate.values()) < skip_below:
            batches = len(setting.sub) // batch_size
            worst = max(estimate, key=lambda name: estimate[name].mean_scatter)
            value = estimate[worst].mean_scatter
            return SmallBatchRisk(
                batch_size=int(batch_size), samples=int(batches * batch_size), layers=estimate, worst_layer=worst,
                max_mean_scatter=value, mean_scatter_se=_scatter_se(value, batches), relative_error=None, train_pass=False,
            )  # fmt: skip
    parts, per_layer = [], {}
    for start in range(0, len(setting.sub) - batch_size + 1, batch_size):
        out, moments = runner.train_moments(setting.sub[start : start + batch_size])
        parts.append(ComparisonParts.of(setting.reference[start : start + len(out)], out, setting.class_axis))  # not kept
        for name, m in moments.items():
            per_layer.setdefault(name, []).append(m)
    if not parts or batch_size < 2:
        return None
    usable = len(parts) * batch_size
    scatter: dict[str, BatchScatter] = {}
    worst, worst_value, worst_se, note = None, None, None, None
    if len(parts) < 2:  # one batch is its own population: a scatter of 0 would say nothing
        note = (
            f"batch-statistics scatter not measurable: the subsample holds one full batch of {batch_size} "
            f"({len(setting.sub)} samples); it needs {2 * batch_size}, which DATA and --mismatch-samples must both allow, "
            f"or --train-batch-size at most {max(2, len(setting.sub) // 2)}"
        )
    else:
        worst, worst_value, worst_se = _worst_scatter(layers, per_layer, len(parts), scatter)
    effect = ComparisonParts.join(parts).comparison()
    flips = bool(effect.agreement is not None and effect.positions and effect.sample_flips is not None)
    return SmallBatchRisk(
        batch_size=int(batch_size),
        samples=int(usable),
        layers=scatter,
        worst_layer=worst,
        max_mean_scatter=worst_value,
        mean_scatter_se=worst_se,
        note=note,
        relative_error=effect.relative_error,
        flip_rate=1.0 - effect.agreement if flips else None,
        positions=effect.positions if flips else None,
        flip_rate_se=_standard_error(effect.sample_flips / effect.positions) if flips else None,
        relative_error_se=None if flips else _standard_error(effect.sample_errors),
    )


def _worst_scatter(layers, per_layer: dict[str, list[Moments]], batches: int, out: dict[str, BatchScatter]) -> tuple[str | None, float, float]:
    """Each layer's batch scatter into ``out``; the worst layer, its scatter and the scatter's
    standard error."""
    worst, worst_value = None, -1.0
    eps = {layer.name: layer.eps or 1e-5 for layer in layers}
    for name, ms in per_layer.items():
        if not ms or ms[0].count == 0:
            continue
        pooled = merge_all(ms)
        sc = metrics.batch_scatter(np.stack([m.mean for m in ms]), np.stack([m.var for m in ms]), pooled.mean, pooled.var, eps.get(name, 1e-5))
        out[name] = BatchScatter(**sc)
        if sc["mean_scatter"] > worst_value:
            worst, worst_value = name, sc["mean_scatter"]
    return worst, worst_value, _scatter_se(worst_value, batches)


def _scatter_se(scatter: float, batches: int) -> float:
    """The scatter is an RMS over the batches: its standard error is about scatter / sqrt(2 batches)."""
    return scatter / math.sqrt(2 * batches)


def _standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of per-sample ``values``."""
    v = np.asarray(values, np.float64)
    return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
