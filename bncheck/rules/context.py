"""What a rule may look at: :class:`RuleContext`, with the evidence each command measured as
typed fields (:class:`DriftEvidence` for ``bncheck drift``, :class:`FoldEvidence` for
``bncheck fold``) instead of a dict keyed by strings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bncheck.layer import BNLayer
from bncheck.numerics.drift import LayerDrift


@dataclass
class DriftEvidence:
    """What ``bncheck drift`` measured (BN101-BN104, BN201, BN301 read it)."""

    #: per measured layer, its drift figures (network order)
    layers: dict[str, LayerDrift]
    samples: int
    #: BN103's candidate input corrections (baseline, candidates, samples, best), or None
    input_diagnosis: dict[str, Any] | None = None
    #: BN201's batch-statistics scatter at --train-batch-size, or None
    small_batch: dict[str, Any] | None = None
    #: BN301's train-mode vs eval-mode output agreement, or None
    train_eval: dict[str, Any] | None = None


@dataclass
class Verification:
    """The outcome of running the original and the folded model on the same inputs."""

    #: "random" or "data"
    inputs: str
    samples: int
    max_abs_err: float | None
    max_rel_err: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "samples": self.samples,
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "passed": self.passed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verification:
        return cls(data["inputs"], data["samples"], data.get("max_abs_err"), data.get("max_rel_err"), data["passed"])


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
