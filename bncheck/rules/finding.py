"""Severities and findings: what rules produce and reports show."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"info": 1, "warning": 2, "error": 3}[self.value]


#: ``--fail-on`` values and the lowest severity that fails the gate (None: never).
FAIL_ON = {"error": Severity.ERROR, "warning": Severity.WARNING, "info": Severity.INFO, "never": None}


def reaches(severity: Severity, fail_on: str) -> bool:
    """Whether a finding of ``severity`` fails a gate set to ``fail_on``."""
    threshold = FAIL_ON[fail_on]
    return threshold is not None and severity.rank >= threshold.rank


@dataclass
class Finding:
    rule: str
    severity: Severity
    layer: str | None
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    #: with ``--baseline``: "new", "worse" or "existing" (existing findings do not fail the gate)
    baseline: str | None = None

    @property
    def gating(self) -> bool:
        """Whether this finding can fail the gate (every finding, except one a baseline already had)."""
        return self.baseline != "existing"

    def to_dict(self) -> dict[str, Any]:
        out = {
            "rule": self.rule,
            "severity": self.severity.value,
            "layer": self.layer,
            "message": self.message,
            "details": self.details,
        }
        if self.baseline is not None:
            out["baseline"] = self.baseline
        return out
