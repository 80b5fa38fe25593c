"""Typed per-command results carried by a :class:`~bncheck.report.report.Report`:
:class:`DriftResult`, :class:`FoldResult` and :class:`RecalibrationResult`.

Each result knows its part of the JSON report (``to_dict``: the top-level keys it owns, in
the order the report writes them; ``layer_fields``: what it adds to one layer's entry) and
rebuilds itself from a parsed report (``from_dict``), so a saved report renders like the run
that wrote it. Nested figures keep their JSON shapes (documented in report_schema.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from bncheck.numerics.site_proof import SiteProof
from bncheck.report.fold_figures import FoldFigures, ProofCounts
from bncheck.rules.context import SmallBatchRisk, Verification
from bncheck.rules.input_diagnosis import InputDiagnosis
from bncheck.rules.stale_statistics import StaleStatistics

#: One layer's drift figures as the report writes them (``LayerDrift.to_dict()``).
DriftFigures = dict[str, Any]
#: The "data" record: path, samples, batch_size and what the reader describes.
DataRecord = dict[str, Any]


@dataclass(kw_only=True)
class CommandResult:
    """What every result answers (the defaults fit a result without the figure asked for)."""

    #: the top-level report key whose presence means a saved report carries this result
    key: ClassVar[str] = ""
    #: the DATA the command read (None without DATA)
    data: DataRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def layer_fields(self, name: str) -> dict[str, Any]:
        """What this result adds to the report entry of layer ``name``."""
        return {}

    def layer_drift(self, name: str) -> DriftFigures | None:
        """The drift figures shown for layer ``name`` (None when not measured)."""
        return None


@dataclass(kw_only=True)
class DriftResult(CommandResult):
    """``bncheck drift``: per-layer figures and the run-level analyses."""

    key: ClassVar[str] = "drift"

    #: per measured layer, its drift figures
    layers: dict[str, DriftFigures]
    first_drifting_layer: str | None
    #: measured layers by descending drift score
    ranking: list[str] | None = None
    input_diagnosis: InputDiagnosis | None = None
    small_batch: SmallBatchRisk | None = None
    train_eval: StaleStatistics | None = None
    accuracy: float | None = None
    #: layers the runner could not observe, with the reason
    unobserved_layers: dict[str, str] | None = None
    #: where ``--save-stats`` wrote the statistics
    saved_stats: str | None = None
    #: the drift-phase thresholds the run was judged by ({code: {name: value}})
    thresholds: dict[str, dict[str, float]] | None = None
    #: ``--channels``: per layer, per-channel arrays for scatter plots
    channels: dict[str, dict[str, list]] | None = None

    def run_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"first_drifting_layer": self.first_drifting_layer}
        if self.ranking is not None:
            out["ranking"] = self.ranking
        out.update(input_diagnosis=self.input_diagnosis.to_dict() if self.input_diagnosis else None, small_batch=self.small_batch.to_dict() if self.small_batch else None, train_eval=self.train_eval.to_dict() if self.train_eval else None, accuracy=self.accuracy)
        for key in ("unobserved_layers", "saved_stats", "thresholds"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.data is None else {"data": self.data}
        out["drift"] = self.run_dict()
        if self.channels is not None:
            out["channels"] = self.channels
        return out

    def layer_fields(self, name: str) -> dict[str, Any]:
        figures = self.layers.get(name)
        return {} if figures is None else {"drift": figures}

    def layer_drift(self, name: str) -> DriftFigures | None:
        return self.layers.get(name)

    @classmethod
    def from_dict(cls, data: dict[str, Any], layers: dict[str, dict[str, Any]]) -> DriftResult:
        run = data["drift"]
        return cls(
            data=data.get("data"),
            layers={name: rest["drift"] for name, rest in layers.items() if "drift" in rest},
            first_drifting_layer=run.get("first_drifting_layer"),
            ranking=run.get("ranking"),
            input_diagnosis=InputDiagnosis.from_dict(run.get("input_diagnosis")),
            small_batch=SmallBatchRisk.from_dict(run.get("small_batch")),
            train_eval=StaleStatistics.from_dict(run.get("train_eval")),
            accuracy=run.get("accuracy"),
            unobserved_layers=run.get("unobserved_layers"),
            saved_stats=run.get("saved_stats"),
            thresholds=run.get("thresholds"),
            channels=data.get("channels"),
        )


#: where whole-model verification inputs came from
INPUT_ORIGINS = ("data", "input-shape", "graph", "inferred", "none")


@dataclass
class VerificationInputs:
    """Which inputs whole-model verification used, and why those (``origin`` "none": none
    could be built, the folded sites were proved on their own only)."""

    origin: str
    #: the first batch's shape per model input (None: no whole-model verification)
    shapes: list[list[int]] | None
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "shapes": self.shapes, "why": self.why}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> VerificationInputs | None:
        return None if data is None else cls(data["origin"], data.get("shapes"), data.get("why", ""))


@dataclass(kw_only=True)
class FoldResult(CommandResult):
    """``bncheck fold``: the verification, the fold figures, each layer's outcome and the
    proof of each folded site on its own."""

    key: ClassVar[str] = "fold"

    verification: Verification
    #: counts, sizes, speed, tolerance and output (the report's "fold" record)
    figures: FoldFigures
    #: per layer, its outcome: status (folded, affine, kept), into, reason
    outcomes: dict[str, dict[str, Any]]
    #: per proved layer (folded, or kept because its proof failed), its site proof
    site_proofs: dict[str, SiteProof] = field(default_factory=dict)
    #: the inputs whole-model verification used
    inputs: VerificationInputs | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verification": self.verification.to_dict()}
        if self.inputs is not None:
            out["verification"]["inputs_used"] = self.inputs.to_dict()
        if self.data is not None:
            out["data"] = self.data
        out["fold"] = self.figures.to_dict()
        return out

    def layer_fields(self, name: str) -> dict[str, Any]:
        outcome = self.outcomes.get(name)
        if outcome is None:
            return {}
        proof = self.site_proofs.get(name)
        return {"fold": outcome if proof is None else {**outcome, "site_proof": proof.to_dict()}}

    def proof_counts(self) -> ProofCounts:
        """How many site proofs passed, failed (those layers were kept) and could not run."""
        values = [p.passed for p in self.site_proofs.values()]
        return ProofCounts(passed=values.count(True), failed=values.count(False), not_proved=values.count(None))

    @classmethod
    def from_dict(cls, data: dict[str, Any], layers: dict[str, dict[str, Any]]) -> FoldResult:
        outcomes = {name: dict(rest["fold"]) for name, rest in layers.items() if "fold" in rest}
        proofs = {name: SiteProof.from_dict(name, o.pop("site_proof")) for name, o in outcomes.items() if "site_proof" in o}
        verification = dict(data["verification"])
        inputs = VerificationInputs.from_dict(verification.pop("inputs_used", None))
        return cls(
            verification=Verification.from_dict(verification),
            figures=FoldFigures.from_dict(data["fold"]),
            outcomes=outcomes,
            data=data.get("data"),
            site_proofs=proofs,
            inputs=inputs,
        )


@dataclass
class LayerRecalibration:
    """One layer of ``bncheck recalibrate``: whether it was re-estimated, drift before/after."""

    recalibrated: bool
    before: DriftFigures | None = None
    after: DriftFigures | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recalibrated": self.recalibrated}
        if self.before:
            out["before"] = self.before
        if self.after:
            out.update(after=self.after, drift=self.after)
        return out


@dataclass(kw_only=True)
class RecalibrationResult(CommandResult):
    """``bncheck recalibrate``: method, passes, output, accuracy and per-layer before/after."""

    key: ClassVar[str] = "recalibration"

    #: method, variance, layers, passes, tolerance, output, accuracy (the "recalibration" record)
    summary: dict[str, Any]
    layers: dict[str, LayerRecalibration] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.data is None else {"data": self.data}
        out["recalibration"] = self.summary
        return out

    def layer_fields(self, name: str) -> dict[str, Any]:
        entry = self.layers.get(name)
        return {} if entry is None else entry.to_dict()

    def layer_drift(self, name: str) -> DriftFigures | None:
        entry = self.layers.get(name)
        return entry.after if entry is not None else None

    @classmethod
    def from_dict(cls, data: dict[str, Any], layers: dict[str, dict[str, Any]]) -> RecalibrationResult:
        entries = {
            name: LayerRecalibration(bool(rest.get("recalibrated")), rest.get("before"), rest.get("after"))
            for name, rest in layers.items()
            if "recalibrated" in rest
        }
        return cls(data=data.get("data"), summary=data["recalibration"], layers=entries)


#: The result types a saved report may carry, tried in order by :func:`result_from_dict`.
RESULT_TYPES: tuple[type[DriftResult] | type[FoldResult] | type[RecalibrationResult], ...] = (
    DriftResult,
    FoldResult,
    RecalibrationResult,
)


def result_from_dict(data: dict[str, Any], layers: dict[str, dict[str, Any]]) -> CommandResult | None:
    """The typed result of a parsed report (``layers``: each layer's keys beyond BNLayer's)."""
    for kind in RESULT_TYPES:
        if kind.key in data:
            return kind.from_dict(data, layers)
    return None


#: Top-level keys a result owns (the rest of a saved report's keys are kept as they are).
RESULT_KEYS = ("data", "drift", "channels", "verification", "fold", "recalibration")
