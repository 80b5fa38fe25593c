"""The figures of one ``bncheck fold`` run (the report's ``"fold"`` record), typed: counts,
sizes, speed, tolerance, output. ``to_dict`` writes the JSON keys in the order the report has
always had them (a :class:`~bncheck.records.Record`: its fields in order); ``from_dict`` reads
a saved report back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bncheck.records import Record

#: How the fold's relative error is defined (written into every report, for its readers).
RELATIVE_ERROR = "max|original - folded| / max|original|, per output, max over outputs"


@dataclass(frozen=True)
class BeforeAfter(Record):
    """A count or a size before and after folding (None where the format does not say)."""

    before: int | None
    after: int | None


@dataclass(frozen=True)
class FoldOutput(Record):
    """Where the folded model went: OUT, its kind, whether it was written and the files."""

    path: str | None
    kind: str
    written: bool
    files: tuple[str, ...] = ()

    @classmethod
    def read(cls, data: dict[str, Any]) -> FoldOutput:
        return cls(data.get("path"), data.get("kind", ""), bool(data.get("written")), tuple(data.get("files") or ()))


@dataclass(frozen=True)
class FoldTiming(Record):
    """Original and folded model timed interleaved on one batch (``--timing``)."""

    runtime: str
    original_ms: float
    folded_ms: float
    speedup: float
    rounds: int
    batch: int | None


@dataclass(frozen=True)
class ProofCounts(Record):
    """How many site proofs passed, failed (those layers were kept) and could not run."""

    passed: int
    failed: int
    not_proved: int


@dataclass(frozen=True)
class FoldFigures:
    """Counts, sizes, speed, tolerance and output of one fold."""

    output: FoldOutput
    layers_folded: int
    layers_kept: int
    layers_affine: int
    affine: bool
    #: how the folded model was produced (e.g. "freeze" for TorchScript), None where only one way
    mode: str | None
    parameters: BeforeAfter
    nodes: BeforeAfter
    file_size: BeforeAfter
    #: None unless timing ran
    timing: FoldTiming | None
    atol: float
    rtol: float
    site_proofs: ProofCounts | None = None

    @property
    def speedup(self) -> float | None:
        return self.timing.speedup if self.timing is not None else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "output": self.output.to_dict(),
            "layers_folded": self.layers_folded,
            "layers_kept": self.layers_kept,
            "layers_affine": self.layers_affine,
            "affine": self.affine,
            "mode": self.mode,
            "parameters": self.parameters.to_dict(),
            "nodes": self.nodes.to_dict(),
            "file_size": self.file_size.to_dict(),
            "speedup": self.speedup,
            "timing": self.timing.to_dict() if self.timing is not None else None,
            "tolerance": {"atol": self.atol, "rtol": self.rtol},
            "relative_error": RELATIVE_ERROR,
        }
        if self.site_proofs is not None:
            out["site_proofs"] = self.site_proofs.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FoldFigures:
        tolerance = data.get("tolerance") or {}
        return cls(
            output=FoldOutput.read(data.get("output") or {}),
            layers_folded=int(data.get("layers_folded", 0)),
            layers_kept=int(data.get("layers_kept", 0)),
            layers_affine=int(data.get("layers_affine", 0)),
            affine=bool(data.get("affine", False)),
            mode=data.get("mode"),
            parameters=BeforeAfter.read(data.get("parameters") or {}),
            nodes=BeforeAfter.read(data.get("nodes") or {}),
            file_size=BeforeAfter.read(data.get("file_size") or {}),
            timing=FoldTiming.from_dict(data.get("timing")),
            atol=tolerance.get("atol"),
            rtol=tolerance.get("rtol"),
            site_proofs=ProofCounts.from_dict(data.get("site_proofs")),
        )
