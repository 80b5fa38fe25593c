"""The guard of ``bncheck recalibrate``: before anything is written, the stored model and the
recalibrated one run on the held-out split (samples no estimate read), and the recalibration is
refused (rule BN501, exit 1, nothing written unless ``--force-write``) when it makes the model
worse beyond noise.

* With labels (a classifier: one class per sample): per-sample top-1 errors before and after.
* Without labels: the top-1 disagreement of each model with the predictions the *same* model
  makes with batch statistics (every BN layer normalising with the statistics of its held-out
  batch of ``--batch-size``: the data's own statistics, the reference BN301 measures against),
  per position over the class axis as drift takes it (a sequence's T positions: a sample's
  loss is the fraction that changed); for outputs without a class axis (dense maps), the
  per-sample squared difference from those outputs, relative to their mean square. Recalibration should bring the running-statistics outputs
  towards the batch-statistics ones; moving them away is what a harmful update looks like.

"Beyond noise" is the paired test of :func:`bncheck.numerics.recalibration.paired_worse`: the
mean per-sample difference exceeds 1.96 standard errors (for 0/1 losses, McNemar's test in its
normal approximation). Mean top-1 confidence before and after (as BN301 takes it,
:func:`bncheck.numerics.outputs.confidence`) is reported beside.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bncheck.backends.interface import ModelSource
from bncheck.engines.measure import LabelCheck, add_bounded, output_class_axis
from bncheck.numerics.moments import Moments, merge_all
from bncheck.numerics.outputs import CLASS_AXIS_AUTO, confidence, predictions, sample_predictions
from bncheck.numerics.recalibration import Z95, paired_worse


def _eval(source: ModelSource, x: np.ndarray, batch_size: int, names: list[str] | None) -> tuple[np.ndarray, dict[str, Moments], int | None]:
    """Eval-mode outputs of ``x`` (batch-first), for ``names`` the merged moments of the BN
    inputs, and the axis of the model's output that follows the batch size."""
    outs: list[np.ndarray] = []
    parts: dict[str, list[Moments]] = {}
    with source.runner(layers=names or None) as runner:
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            if not names:
                outs.append(np.asarray(runner.forward(chunk)))
                continue
            out, moments = runner.moments(chunk)
            outs.append(np.asarray(out))
            add_bounded(parts, moments)
        batch_axis = getattr(runner, "batch_axis", 0)
    return np.concatenate(outs), {n: merge_all(ms) for n, ms in parts.items()}, batch_axis


def _batch_statistics_outputs(source: ModelSource, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """Outputs with every BN on its batch's statistics, for the first ``covered`` samples (a
    trailing batch of one sample has no batch statistics)."""
    outs = []
    with source.runner() as runner:
        fixed = runner.input_spec.batch
        if fixed is not None and fixed < 2:  # a model exported with a batch of one has no batch statistics
            return np.empty((0,)), 0
        batch_size = fixed or batch_size  # a fixed batch runs whole (a partial last one is left out below)
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            if len(chunk) < max(2, fixed or 0):
                break
            outs.append(np.asarray(runner.forward(chunk, bn="train")))
    covered = sum(len(o) for o in outs)
    return (np.concatenate(outs) if outs else np.empty((0,))), covered


def _flat(out: np.ndarray) -> np.ndarray:
    return np.asarray(out, np.float64).reshape(len(out), -1)


def _losses(out: np.ndarray, target: np.ndarray | None, reference: np.ndarray | None, axis: int | None) -> np.ndarray:
    """Per held-out sample: its top-1 error against ``target``, or the fraction of its positions
    whose top-1 class differs from ``reference``'s (one for a classifier, T for a (T, C)
    sequence: a CTC recogniser's 40 x 6,625 scores were one argmax over 265k values), or, without
    a class axis (``axis``: the per-sample one), its squared distance from ``reference``
    relative to their mean square."""
    if target is not None:
        return (sample_predictions(out, axis) != np.asarray(target)).astype(np.float64)
    if axis is not None:
        return np.mean(predictions(out, axis) != predictions(reference, axis), axis=1, dtype=np.float64)
    a, ref = _flat(out), _flat(reference)
    scale = float(np.mean(ref**2)) or 1.0
    return np.mean((a - ref) ** 2, axis=1) / scale


def check(
    source: ModelSource, candidate: ModelSource, x: np.ndarray, y: np.ndarray | None, batch_size: int, names: list[str], z: float = Z95,
    labels: LabelCheck | None = None, class_axis: int | str = CLASS_AXIS_AUTO,
) -> tuple[dict[str, Any], dict[str, Moments]]:  # fmt: skip
    """The guard's figures on the held-out samples ``x`` (labels ``y`` or None) and the
    candidate's BN-input moments on them (the "after" figures of the in-order methods).
    Labels that cannot be class indices of the output are refused where ``labels.asked``,
    else left out (``labels_left_out``: the check runs without them). ``class_axis``: the
    output's class axis as drift's ``--class-axis`` gives it (auto: the last axis of a
    per-sample output of rank 1 or 2, a classifier's scores or a recogniser's (T, C) sequence;
    none: compared by distance, as dense maps are)."""
    before, _, batch_axis = _eval(source, x, batch_size, [])
    after, moments, _ = _eval(candidate, x, batch_size, names)
    left_out = None
    axis = output_class_axis(before, class_axis, batch_axis)  # a --class-axis that does not fit stops here
    if y is not None and (axis is None or sample_predictions(before, axis) is None):
        y = None  # per-sample labels need one class per sample: a sequence or a map is checked without them
    if y is not None and len(y):
        refused = (labels or LabelCheck()).beyond(y, int(np.shape(before)[axis + 1]))
        if refused is not None:
            y, left_out = None, f"labels left out of the held-out check: {refused[0]}; {refused[1]}"
    if y is not None:
        basis, reference, covered = "labels", None, len(x)
    else:
        reference, covered = _batch_statistics_outputs(source, x, batch_size)
        basis = "agreement with batch-statistics outputs" if axis is not None else "distance to batch-statistics outputs"
    empty = np.empty((0,))
    loss_before = _losses(before[:covered], None if y is None else y[:covered], reference, axis) if covered else empty
    loss_after = _losses(after[:covered], None if y is None else y[:covered], reference, axis) if covered else empty
    test = paired_worse(loss_before, loss_after, z)
    figures: dict[str, Any] = {
        "basis": basis,
        "samples": int(covered),
        "loss_before": float(loss_before.mean()) if covered else None,
        "loss_after": float(loss_after.mean()) if covered else None,
        "difference": test["difference"],
        "standard_error": test["standard_error"],
        "z": z,
        "worse": bool(test["worse"]),
        "confidence_before": confidence(before, axis),
        "confidence_after": confidence(after, axis),
    }
    if left_out:
        figures["labels_left_out"] = left_out
    if y is not None and covered:
        figures["accuracy_before"] = 1.0 - figures["loss_before"]
        figures["accuracy_after"] = 1.0 - figures["loss_after"]
    return figures, moments
