"""One pass over the data: stream batches through a runner, merge per-layer moments (Chan,
float64) with bounded memory, keep a uniform random subsample for the train-mode analyses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bncheck.data.labels import beyond_classes
from bncheck.errors import DataError, UsageError
from bncheck.numerics.moments import Moments, SampleMoments, merge_all
from bncheck.numerics.outputs import CLASS_AXIS_AUTO, class_axis_of, sample_predictions
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
    #: per-layer moments of the even and of the odd batches of the pass (two disjoint halves of
    #: DATA: BN301's noise floor); None where the pass did not keep them
    halves: tuple[dict[str, Moments], dict[str, Moments]] | None = None
    #: the labels of the subsample's samples (None unless every sample had one)
    sub_labels: np.ndarray | None = None
    #: the output axis that followed the batch size (outputs here are batch-first)
    batch_axis: int | None = None
    #: layer -> the per-sample moments of the subsample's samples (in its order) from the pass
    #: itself, for every layer whose runner gave them: the subsample's eval-mode moments need
    #: no second pass (BN301)
    sub_moments: dict[str, SampleMoments] = field(default_factory=dict)
    #: why DATA's labels were left out (they cannot be class indices of the model's output)
    label_note: str | None = None

    @classmethod
    def with_sample(cls, reservoir: Reservoir, moments: dict[str, Moments], samples: int, **fields) -> Measurement:
        """The measurement of a pass whose subsample (inputs, outputs and labels) is what
        ``reservoir`` kept."""
        sub, sub_out, sub_labels, sub_moments = reservoir.sample_all()
        return cls(moments=moments, samples=samples, subsample=sub, sub_outputs=sub_out, sub_labels=sub_labels, sub_moments=sub_moments, **fields)


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
    keep_outputs: bool = True,
    on_batch: Callable[[int], None] | None = None,
    keep_predictions: bool = False,
    seed: int = 0,
    class_axis: int | str = CLASS_AXIS_AUTO,
    until=None,
    labels: LabelCheck | None = None,
) -> Measurement:
    """Stream ``batches`` through ``runner.moments``; merge per-layer moments (Chan, float64),
    for the whole pass and for its even and odd batches apart; keep a uniform random subsample
    of ``keep`` samples, their eval outputs and labels for the train-mode analyses (a folder
    sorted by class must not give single-class batches; ``keep_outputs`` False: the inputs
    only). Memory does not grow with the data:
    per-layer moments are merged every ``_MERGE_EVERY`` batches and predictions are only
    counted (one class per sample over ``class_axis``; outputs with several positions per sample
    have no per-sample accuracy). ``labels``: DATA's labels as a whole, checked against the
    output's classes at the first batch (see :class:`LabelCheck`)."""
    parts: dict[str, list[Moments]] = {}
    halves: tuple[dict[str, list[Moments]], dict[str, list[Moments]]] = ({}, {})
    reservoir = Reservoir(keep, seed, outputs=keep_outputs)
    samples = batches_seen = 0
    counts = _Counts(labels or LabelCheck())
    per_sample = keep > 0 and hasattr(runner, "sample_moments")
    for batch in batches:
        x = batch.x
        if per_sample:  # the kept samples' own moments come from the same runtime pass
            outputs, moments, samples_moments = runner.sample_moments(x)
        else:
            (outputs, moments), samples_moments = runner.moments(x), None
        add_bounded(parts, moments)
        add_bounded(halves[batches_seen % 2], moments)
        y = getattr(batch, "y", None)
        if keep_predictions:
            counts.add(outputs, y, class_axis, runner)
        reservoir.offer(x, outputs, None if counts.beyond else y, samples_moments)
        samples += len(x)
        batches_seen += 1
        if on_batch is not None:
            on_batch(len(x))
        if until is not None:
            until.add(moments, len(x))
            if until.done:
                break
    merged = {name: merge_all(ms) for name, ms in parts.items()}
    return Measurement.with_sample(
        reservoir,
        merged,
        samples,
        correct=counts.correct if keep_predictions and counts.labelled and not counts.unlabelled else None,
        labelled=counts.labelled,
        label_note=counts.beyond,
        halves=tuple({name: merge_all(ms) for name, ms in h.items()} for h in halves) if batches_seen >= 2 else None,
        batch_axis=getattr(runner, "batch_axis", 0),
    )


@dataclass
class LabelCheck:
    """DATA's labels as a whole, for :func:`measure` to check against the model's output at its
    first batch: the largest label (None: each batch is checked as it comes), where they come
    from (``Labels.source``) and whether the user asked for them (``--labels``)."""

    largest: int | None = None
    source: str = "labels"
    asked: bool = False

    def beyond(self, y: np.ndarray, classes: int) -> tuple[str, str] | None:
        """None where ``y`` and DATA's largest label are class indices of an output of
        ``classes`` classes; else (problem, fix) (see :func:`~bncheck.data.labels.beyond_classes`),
        or DataError naming both where ``--labels`` asked for them."""
        y = np.asarray(y)
        largest = max(int(y.max()) if y.size else -1, self.largest if self.largest is not None else -1)
        if largest < classes and not (y.size and int(y.min()) < 0):
            return None
        problem, fix = beyond_classes(largest, classes, self.source)
        if self.asked:
            raise DataError(f"{problem}; {fix}.")
        return problem, fix


class _Counts:
    """Running top-1 counts of a pass (labelled samples and correct predictions). Labels that
    cannot be class indices of the output (beyond its classes: class folders named 0, 90, 180,
    270 for a 4-class orientation model, which scored 25%) are refused where the user asked for
    them, else left out with a note (``beyond``): folders named 2024, 2025 may be days."""

    def __init__(self, labels: LabelCheck) -> None:
        self.correct = self.labelled = 0
        self.unlabelled = False
        self.labels = labels
        self.beyond: str | None = None

    def add(self, outputs, y, class_axis: int | str, runner) -> None:
        axis = output_class_axis(outputs, class_axis, getattr(runner, "batch_axis", 0))  # a bad --class-axis stops here
        if y is None or self.beyond:
            self.unlabelled = True
            return
        pred = sample_predictions(outputs, axis)
        if pred is None or pred.shape != np.shape(y):
            self.unlabelled = True
            return
        y = np.asarray(y)
        refused = self.labels.beyond(y, int(np.shape(outputs)[axis + 1]))
        if refused is not None:
            self.beyond = f"labels left out: {refused[0]} (no accuracy); {refused[1]}"
            self.unlabelled = True
            return
        self.correct += int(np.count_nonzero(pred == y))
        self.labelled += len(pred)


def output_class_axis(outputs, class_axis: int | str, batch_axis: int | None) -> int | None:
    """The per-sample class axis of batch-first ``outputs`` for the ``--class-axis`` option
    (UsageError naming the option where it does not fit the output)."""
    try:
        return class_axis_of(np.shape(outputs)[1:], class_axis, batch_axis=batch_axis or 0)
    except ValueError as exc:
        raise UsageError(f"{exc}; pass --class-axis auto, none, or an axis of the model's output.") from exc


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
