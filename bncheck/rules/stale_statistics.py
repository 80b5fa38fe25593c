"""BN301's evidence as typed records: :class:`StaleStatistics` (the report's
``drift.train_eval``) and its :class:`NoiseFloor`. ``to_dict`` writes the keys of the old
dict in the old order; ``from_dict`` (:class:`~bncheck.records.Record`) reads it back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bncheck.records import Record


@dataclass(frozen=True)
class NoiseFloor(Record):
    """The effect's figures between half of DATA's statistics and all of them, scaled to the
    sampling noise of all of DATA (``measured`` false: the effect could not reach BN301's
    warning thresholds and the floor's pass was skipped; the other fields are then None)."""

    measured: bool
    relative_error: float | None = None
    #: only with a class axis
    top1_agreement: float | None = None
    #: which half of DATA, how many samples it holds, and the scale applied to its figures
    halves: str | None = None
    half_samples: int | None = None
    scale: float | None = None
    #: samples of the subsample the floor was compared on: all of them, or fewer where its pass
    #: stopped once they decided BN301 (None in a record of an older version)
    samples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        if not self.measured:
            return {"measured": False}
        out: dict[str, Any] = {"relative_error": self.relative_error}
        if self.top1_agreement is not None:
            out["top1_agreement"] = self.top1_agreement
        out.update(measured=True, halves=self.halves, half_samples=self.half_samples, scale=self.scale)
        if self.samples is not None:
            out["samples"] = self.samples
        return out

    @classmethod
    def read(cls, data: dict[str, Any]) -> NoiseFloor:
        # a record without "measured" (an older version) was measured when it has figures
        return super().read({"measured": "relative_error" in data, **data})


#: the figures written after the effect and its floor, in this order
_TAIL = (
    "method", "statistics_samples", "refinement_passes", "refinement_movement", "refinement_converged",
    "refinement_tolerance", "refinement_method", "refinement_levels", "batch_axis", "class_axis", "noise_multiple",
)  # fmt: skip
_PAIRS = (("accuracy_stored", "accuracy_population"), ("confidence_stored", "confidence_population"))


@dataclass(frozen=True)
class StaleStatistics(Record):
    """BN301's evidence: the subsample's eval outputs with the stored statistics against the
    same model normalised with DATA's own population statistics (what ``recalibrate --method
    exact`` writes), with the noise floor of DATA's statistics."""

    #: subsample the outputs are compared on
    samples: int
    #: ``||population - stored|| / ||stored||`` over the outputs
    relative_error: float
    noise_floor: NoiseFloor
    #: standard errors by which the effect exceeds ``noise_multiple`` x the floor (NaN when the
    #: floor was not measured)
    significance: float
    method: str
    #: samples DATA's statistics rest on
    statistics_samples: int
    #: how DATA's population statistics were refined (passes, last movement, whether it settled
    #: below the tolerance, "one pass" / "level by level" / "fixed-point passes", BN levels)
    refinement_passes: int
    refinement_movement: float | None
    refinement_converged: bool
    refinement_tolerance: float
    refinement_method: str
    refinement_levels: int
    batch_axis: int | None
    #: class axis of the model's output, the batch axis included, as --class-axis counts it
    #: (None: compared by relative error; schema_version 2 counted the per-sample output's axes)
    class_axis: int | None
    noise_multiple: float | None
    #: the most drifted layers (by drift score)
    top_layers: list[str]
    #: with a class axis: positions per sample, fraction whose top-1 class agrees, positions that differ
    positions: int | None = None
    top1_agreement: float | None = None
    flips: int | None = None
    #: with labels: accuracy with the stored statistics and with DATA's own
    accuracy_stored: float | None = None
    accuracy_population: float | None = None
    #: mean top-class probability with the stored statistics and with DATA's own
    confidence_stored: float | None = None
    confidence_population: float | None = None
    #: keys of a saved record this version does not write (a report of an older version:
    #: ``per_layer``, ``batch_size``), kept so that the record reads back as it was
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def disagreement(self) -> float | None:
        return None if self.top1_agreement is None else 1.0 - self.top1_agreement

    @property
    def diverged(self) -> bool:
        """Whether the refinement stopped because its whole-model passes diverged: their last
        statistics are no estimate of DATA's (a random-init ResNet-18 as TorchScript read 69%
        top-1 agreement on its own kind of data, where its level-by-level ONNX copy reads 89.5%)."""
        return self.refinement_converged is False and "diverging" in (self.refinement_method or "")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"samples": self.samples, "relative_error": self.relative_error}
        if self.top1_agreement is not None:
            out.update(positions=self.positions, top1_agreement=self.top1_agreement)
        # the flips come before the floor when it was measured, after the significance when not
        if self.flips is not None and self.noise_floor.measured:
            out["flips"] = self.flips
        out.update(noise_floor=self.noise_floor.to_dict(), significance=self.significance)
        if self.flips is not None and not self.noise_floor.measured:
            out["flips"] = self.flips
        out.update({key: getattr(self, key) for key in _TAIL})
        for pair in _PAIRS:
            if all(getattr(self, key) is not None for key in pair):
                out.update({key: getattr(self, key) for key in pair})
        out["top_layers"] = list(self.top_layers)
        out.update(self.extra)
        return out

    @classmethod
    def read(cls, data: dict[str, Any]) -> StaleStatistics:
        # NaN: no significance (a record of an older version)
        return super().read({"significance": math.nan, **data})
