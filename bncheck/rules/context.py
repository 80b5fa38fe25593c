"""What a rule may look at: :class:`RuleContext`, with the evidence each command measured as
typed fields (:class:`DriftEvidence` for ``bncheck drift``, :class:`FoldEvidence` for
``bncheck fold``) instead of a dict keyed by strings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bncheck.layer import BNLayer
from bncheck.numerics.drift import LayerDrift
from bncheck.records import Record
from bncheck.rules.input_diagnosis import InputDiagnosis
from bncheck.rules.stale_statistics import StaleStatistics


@dataclass(frozen=True)
class BatchScatter(Record):
    """One layer's scatter of size-B batch statistics around the population's (RMS over the
    batches, mean over channels): means in channel standard deviations, variances as log-ratio."""

    mean_scatter: float
    var_scatter: float
    batches: int


@dataclass(frozen=True)
class SmallBatchRisk(Record):
    """BN201's evidence: one train-mode pass over the subsample in full batches of
    ``batch_size``, or, where the batch scatter estimated from the main pass is far below
    BN201's threshold, that estimate alone (the report's ``drift.small_batch`` record)."""

    batch_size: int
    #: samples in the full batches
    samples: int
    #: per layer, its batch scatter (network order)
    layers: dict[str, BatchScatter]
    #: the layer whose batch means scatter most, its scatter and the scatter's standard error
    #: (None with one batch only: its own population, nothing to measure; ``note`` says so)
    worst_layer: str | None
    max_mean_scatter: float | None
    mean_scatter_se: float | None
    #: relative output change, train mode vs eval mode
    relative_error: float | None
    #: with a class axis: the fraction of positions whose top-1 class changes, its standard
    #: error and the positions per sample; without one, the relative error's standard error
    flip_rate: float | None = None
    positions: int | None = None
    flip_rate_se: float | None = None
    relative_error_se: float | None = None
    note: str | None = None
    #: whether the train-mode pass ran: False when the batch scatter estimated from the main
    #: pass was too small for BN201 to fire (the scatter figures are that estimate, the output
    #: figures None)
    train_pass: bool = True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batch_size": self.batch_size,
            "samples": self.samples,
            "layers": {name: scatter.to_dict() for name, scatter in self.layers.items()},
            "worst_layer": self.worst_layer,
            "max_mean_scatter": self.max_mean_scatter,
            "mean_scatter_se": self.mean_scatter_se,
        }
        if self.note is not None:
            out["note"] = self.note
        out["train_pass"] = self.train_pass
        out["relative_error"] = self.relative_error
        if self.flip_rate is not None:
            out.update(flip_rate=self.flip_rate, positions=self.positions, flip_rate_se=self.flip_rate_se)
        else:
            out["relative_error_se"] = self.relative_error_se
        return out


@dataclass
class DriftEvidence:
    """What ``bncheck drift`` measured (BN101-BN104, BN201, BN301 read it)."""

    #: per measured layer, its drift figures (network order)
    layers: dict[str, LayerDrift]
    samples: int
    #: BN103's candidate input corrections (baseline, candidates, samples, best), or None
    input_diagnosis: InputDiagnosis | None = None
    #: BN201's batch-statistics scatter at --train-batch-size, or None
    small_batch: SmallBatchRisk | None = None
    #: BN301's comparison of the outputs with the stored statistics against the outputs with
    #: DATA's own population statistics (agreement, relative error, noise floor), or None
    train_eval: StaleStatistics | None = None


@dataclass
class Verification(Record):
    """The outcome of running the original and the folded model on the same inputs."""

    #: "random" or "data"
    inputs: str
    samples: int
    max_abs_err: float | None
    max_rel_err: float | None
    passed: bool


@dataclass
class FoldEvidence:
    """What ``bncheck fold`` checked about its result (BN401 reads it)."""

    verification: Verification
    atol: float
    rtol: float
    #: why the outputs cannot be compared at all (different count or shapes), or None
    output_mismatch: str | None = None


@dataclass
class RecalibrationEvidence:
    """What ``bncheck recalibrate``'s guard measured on the held-out split (BN501 reads it):
    the figures of :func:`bncheck.commands.recalibrate_guard.check` and whether OUT was written."""

    guard: dict[str, Any]
    written: bool


@dataclass
class RuleContext:
    """What a rule may look at: the layers, the options, and what the command measured."""

    layers: list[BNLayer]
    thresholds: dict[str, dict[str, float]]
    model_format: str = ""
    train_batch_size: int | None = None
    #: the model's ops/modules (BN000's message), when known
    op_count: int | None = None
    drift: DriftEvidence | None = None
    fold: FoldEvidence | None = None
    recalibration: RecalibrationEvidence | None = None

    def threshold(self, code: str, name: str) -> float:
        return float(self.thresholds[code][name])
