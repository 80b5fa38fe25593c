"""The guard of ``bncheck recalibrate``: before anything is written, the stored model and the
recalibrated one run on the held-out split (samples no estimate read), and the recalibration is
refused (rule BN501, exit 1, nothing written unless ``--force-write``) when it makes the model
worse beyond noise.

* With labels: per-sample top-1 errors before and after.
* Without labels: the top-1 disagreement of each model with the predictions the *same* model
  makes with batch statistics (every BN layer normalising with the statistics of its held-out
  batch of ``--batch-size``: the data's own statistics, the reference BN301 measures against);
  for outputs without a class axis, the per-sample squared difference from those outputs,
  relative to their mean square. Recalibration should bring the running-statistics outputs
  towards the batch-statistics ones; moving them away is what a harmful update looks like.

"Beyond noise" is the paired test of :func:`bncheck.numerics.recalibration.paired_worse`: the
mean per-sample difference exceeds 1.96 standard errors (for 0/1 losses, McNemar's test in its
normal approximation). Mean top-1 confidence (softmax) before and after is reported beside.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bncheck.backends.interface import ModelSource
from bncheck.data.labels import beyond_classes
from bncheck.engines.measure import LabelCheck, add_bounded
from bncheck.errors import DataError
from bncheck.numerics.moments import Moments, merge_all
from bncheck.numerics.recalibration import Z95, paired_worse


def _eval(source: ModelSource, x: np.ndarray, batch_size: int, names: list[str] | None) -> tuple[np.ndarray, dict[str, Moments]]:
    """Eval-mode outputs of ``x`` and, for ``names``, the merged moments of the BN inputs."""
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
    return np.concatenate(outs), {n: merge_all(ms) for n, ms in parts.items()}


def _batch_statistics_outputs(source: ModelSource, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, int]:
    """Outputs with every BN on its batch's statistics, for the first ``covered`` samples (a
    trailing batch of one sample has no batch statistics)."""
    outs = []
    with source.runner() as runner:
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            if len(chunk) < 2:
                break
            outs.append(np.asarray(runner.forward(chunk, bn="train")))
    covered = sum(len(o) for o in outs)
    return (np.concatenate(outs) if outs else np.empty((0,))), covered


def _flat(out: np.ndarray) -> np.ndarray:
    return np.asarray(out, np.float64).reshape(len(out), -1)


def _confidence(out: np.ndarray) -> float | None:
    a = _flat(out)
    if a.shape[1] < 2:
        return None
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return float(np.mean(e.max(axis=1) / e.sum(axis=1)))


def _losses(out: np.ndarray, target: np.ndarray | None, reference: np.ndarray | None) -> np.ndarray:
    a = _flat(out)
    if target is not None:
        return (a.argmax(axis=1) != np.asarray(target)).astype(np.float64)
    ref = _flat(reference)
    if a.shape[1] > 1:
        return (a.argmax(axis=1) != ref.argmax(axis=1)).astype(np.float64)
    scale = float(np.mean(ref**2)) or 1.0
    return np.mean((a - ref) ** 2, axis=1) / scale


def check(
    source: ModelSource, candidate: ModelSource, x: np.ndarray, y: np.ndarray | None, batch_size: int, names: list[str], z: float = Z95,
    labels: LabelCheck | None = None,
) -> tuple[dict[str, Any], dict[str, Moments]]:  # fmt: skip
    """The guard's figures on the held-out samples ``x`` (labels ``y`` or None) and the
    candidate's BN-input moments on them (the "after" figures of the in-order methods).
    Labels that cannot be class indices of the output are refused where ``labels.asked``,
    else left out (``labels_left_out``: the check runs without them)."""
    before, _ = _eval(source, x, batch_size, [])
    after, moments = _eval(candidate, x, batch_size, names)
    left_out = None
    if y is not None and len(y):
        classes, largest = _flat(before).shape[1], max(int(np.max(y)), labels.largest if labels and labels.largest is not None else -1)
        if largest >= classes or int(np.min(y)) < 0:
            problem, fix = beyond_classes(largest, classes, labels.source if labels else "labels")
            if labels is not None and labels.asked:
                raise DataError(f"{problem}; {fix}.")
            y, left_out = None, f"labels left out of the held-out check: {problem}; {fix}"
    if y is not None:
        basis, reference, covered = "labels", None, len(x)
    else:
        reference, covered = _batch_statistics_outputs(source, x, batch_size)
        basis = "agreement with batch-statistics outputs" if _flat(after).shape[1] > 1 else "distance to batch-statistics outputs"
    loss_before = _losses(before[:covered], None if y is None else y[:covered], reference)
    loss_after = _losses(after[:covered], None if y is None else y[:covered], reference)
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
        "confidence_before": _confidence(before),
        "confidence_after": _confidence(after),
    }
    if left_out:
        figures["labels_left_out"] = left_out
    if y is not None and covered:
        figures["accuracy_before"] = 1.0 - figures["loss_before"]
        figures["accuracy_after"] = 1.0 - figures["loss_after"]
    return figures, moments
