"""The setting of BN301's and BN201's output comparisons: the kept subsample, its eval outputs
(the main pass's, stored statistics), labels, class axis and per-sample BN-input moments."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bncheck.engines.measure import Measurement, output_class_axis
from bncheck.numerics.moments import Moments, SampleMoments


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
    #: the axis of the model's output that follows the batch size (the runner's ``batch_axis``)
    batch_axis: int | None = 0

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
    return OutputSetting(result.subsample[:samples], ref, labels, axis, batch_size, kept, result.batch_axis)
