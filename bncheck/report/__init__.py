"""What every command produces: findings, the report, its JSON form, baselines and diffs,
and the saved-statistics file format."""

from bncheck.report.finding import Finding, Severity
from bncheck.report.report import Report

__all__ = ["Finding", "Report", "Severity"]
