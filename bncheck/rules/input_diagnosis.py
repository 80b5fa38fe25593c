"""BN103's evidence as typed records: :class:`InputDiagnosis` (the report's
``drift.input_diagnosis``) and its :class:`ScoredCandidate` corrections. ``to_dict`` writes the keys
of the old dict in the old order; ``from_dict`` reads it back.

``inference`` (what the model expects of its input, inferred from the first BN layer) stays a
dict: its shape varies with the input (``affine`` false or true, ``suggested`` as
``--mean/--std`` for images or scale/offset for arrays, ``pixels.under`` for images only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ScoredCandidate:
    """One input correction re-measured on the subsample: what it is, the options that apply it
    (None where no option does), and the drift score of the first layers / the first layer."""

    description: str
    options: str | None
    score: float
    first_layer_score: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "options": self.options, "score": self.score, "first_layer_score": self.first_layer_score}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoredCandidate:
        return cls(data["description"], data.get("options"), data["score"], data.get("first_layer_score"))


@dataclass(frozen=True)
class InputDiagnosis:
    """BN103's evidence: the first BN layers re-measured under candidate input corrections."""

    #: drift score of the first layers (and of the first layer) as measured
    baseline: float
    baseline_first_layer: float | None
    #: the corrections tried, lowest score first
    candidates: list[ScoredCandidate]
    samples: int
    #: the layers re-measured
    layers: list[str]
    #: what the model expects of its input (variable shape: see the module's docstring), or None
    inference: dict[str, Any] | None
    #: the candidate that halves the drift, if one does
    best: ScoredCandidate | None = None
    #: keys of a saved record this version does not write, kept so that it reads back as it was
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "baseline": self.baseline, "baseline_first_layer": self.baseline_first_layer,
            "candidates": [c.to_dict() for c in self.candidates], "samples": self.samples,
            "layers": list(self.layers), "inference": self.inference,
        }  # fmt: skip
        if self.best is not None:
            out["best"] = self.best.to_dict()
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> InputDiagnosis | None:
        if not data:
            return None
        known = ("baseline", "baseline_first_layer", "candidates", "samples", "layers", "inference", "best")
        return cls(
            baseline=data.get("baseline"),
            baseline_first_layer=data.get("baseline_first_layer"),
            candidates=[ScoredCandidate.from_dict(c) for c in data.get("candidates") or []],
            samples=data.get("samples"),
            layers=list(data.get("layers") or []),
            inference=data.get("inference"),
            best=ScoredCandidate.from_dict(data["best"]) if data.get("best") else None,
            extra={k: v for k, v in data.items() if k not in known},
        )
