"""One pass over the data: stream batches through a runner, merge per-layer moments (Chan,
float64) with bounded memory, keep a uniform random subsample for the train-mode analyses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bncheck.numerics.moments import Moments, merge_all
from bncheck.numerics.reservoir import Reservoir


@dataclass
class Measurement:
    """What one pass over the data produced."""

    moments: dict[str, Moments]
    samples: int
    subsample: np.ndarray | None
    sub_outputs: np.ndarray | None
    labels: np.ndarray | None = None
    outputs_for_accuracy: list[np.ndarray] = field(default_factory=list)
    #: running top-1 counts from :func:`measure` (memory flat in the data size): correctly
    #: predicted and labelled samples; ``correct`` is None when some sample had no label
    correct: int | None = None
    labelled: int = 0


#: per-layer moments of this many batches are merged into one (bounded memory, and
#: :func:`merge_all`'s order independence within each group)
_MERGE_EVERY = 64


def add_bounded(parts: dict[str, list[Moments]], moments: dict[str, Moments]) -> None:
    """Append one batch's per-layer moments to ``parts``, merging a layer's list into one entry
    every ``_MERGE_EVERY`` batches so that memory does not grow with the data."""
    for name, m in moments.items():
        ms = parts.setdefault(name, [])
        ms.append(m)
        if len(ms) >= _MERGE_EVERY:
            ms[:] = [merge_all(ms)]


def measure(
    runner,
    batches,
    *,
    keep: int,
    on_batch: Callable[[int], None] | None = None,
    keep_predictions: bool = False,
    seed: int = 0,
    until=None,
) -> Measurement:
    """Stream ``batches`` through ``runner.moments``; merge per-layer moments (Chan, float64);
    keep a uniform random subsample of ``keep`` samples and their eval outputs for the
    train-mode analyses (a folder sorted by class must not give single-class batches).
    Memory does not grow with the data: per-layer moments are merged every
    ``_MERGE_EVERY`` batches and predictions are only counted."""
    parts: dict[str, list[Moments]] = {}
    reservoir = Reservoir(keep, seed)
    samples = 0
    correct, labelled, unlabelled = 0, 0, False
    for batch in batches:
        x = batch.x
        outputs, moments = runner.moments(x)
        add_bounded(parts, moments)
        reservoir.offer(x, outputs)
        if keep_predictions:
            y = getattr(batch, "y", None)
            if y is None:
                unlabelled = True
            else:
                pred = np.asarray(outputs).reshape(len(x), -1).argmax(axis=1)
                correct += int(np.count_nonzero(pred == np.asarray(y)))
                labelled += len(x)
        samples += len(x)
        if on_batch is not None:
            on_batch(len(x))
        if until is not None:
            until.add(moments, len(x))
            if until.done:
                break
    merged = {name: merge_all(ms) for name, ms in parts.items()}
    sub, sub_out = reservoir.sample()
    return Measurement(
        moments=merged,
        samples=samples,
        subsample=sub,
        sub_outputs=sub_out,
        correct=correct if keep_predictions and labelled and not unlabelled else None,
        labelled=labelled,
    )


def array_moments(runner, x: np.ndarray, batch_size: int, layers: list[str]) -> dict[str, Moments]:
    """Per-layer moments of the samples ``x`` (in memory) in eval mode, run in batches of
    ``batch_size`` and merged (Chan, float64); layers the runner did not observe are left out."""
    parts: dict[str, list[Moments]] = {}
    for start in range(0, len(x), batch_size):
        _, moments = runner.moments(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
        add_bounded(parts, {name: moments[name] for name in layers if name in moments})
    return {name: merge_all(ms) for name, ms in parts.items()}


def train_pass(runner, batches, layers: list[str], on_batch: Callable[[int], None] | None = None, until=None) -> Measurement:
    """Per-layer moments of a pass in which every BN layer normalises with its batch's
    statistics (batches of one sample, which have none, are skipped), merged over batches
    (every ``_MERGE_EVERY`` batches, as in :func:`measure`: memory does not grow with the data).
    ``until`` (a :class:`~bncheck.numerics.recalibration.PrecisionTracker`) sees every batch and
    stops the pass once it is done, in both functions."""
    parts: dict[str, list[Moments]] = {name: [] for name in layers}
    samples = 0
    for batch in batches:
        if len(batch.x) < 2:
            continue
        _, moments = runner.train_moments(batch.x)
        add_bounded(parts, moments)
        samples += len(batch.x)
        if on_batch is not None:
            on_batch(len(batch.x))
        if until is not None:
            until.add(moments, len(batch.x))
            if until.done:
                break
    merged = {name: merge_all(ms) for name, ms in parts.items() if ms}
    return Measurement(moments=merged, samples=samples, subsample=None, sub_outputs=None)
