"""What every command produces: findings, the report and its typed per-command results, its
JSON form, baselines and diffs, and the saved-statistics file format."""

from bncheck.report.report import Report
from bncheck.report.results import (
    CommandResult,
    DriftResult,
    FoldResult,
    LayerRecalibration,
    RecalibrationResult,
)
from bncheck.rules.finding import Finding, Severity

__all__ = [
    "CommandResult",
    "DriftResult",
    "Finding",
    "FoldResult",
    "LayerRecalibration",
    "RecalibrationResult",
    "Report",
    "Severity",
]
