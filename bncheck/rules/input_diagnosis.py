"""BN103's evidence as typed records: :class:`InputDiagnosis` (the report's
``drift.input_diagnosis``) and its :class:`ScoredCandidate` corrections. ``to_dict`` writes the keys
of the old dict in the old order; ``from_dict`` (:class:`~bncheck.records.Record`) reads it back.

``inference`` (what the model expects of its input, inferred from the first BN layer) stays a
dict: its shape varies with the input (``affine`` false or true, ``suggested`` as
``--mean/--std`` for images or scale/offset for arrays, ``pixels.under`` for images only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bncheck.records import Record


@dataclass(frozen=True)
class ScoredCandidate(Record):
    """One input correction re-measured on the subsample: what it is, the options that apply it
    (None where no option does), and the drift score of the first layers / the first layer."""

    description: str
    options: str | None
    score: float
    first_layer_score: float | None


@dataclass(frozen=True)
class InputDiagnosis(Record):
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
    #: where ``best`` is the inferred mean/std: the named correction (channel order, /255,
    #: inverted ...) that lowers the score most, if it lowers it by at least a tenth
    also: ScoredCandidate | None = None
    #: whether DATA is images (the finding's advice is said in image terms), None: not known
    images: bool | None = None
    #: keys of a saved record this version does not write, kept so that it reads back as it was
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for key in ("best", "also", "images"):
            if out.get(key) is None:
                del out[key]
        return out
