"""What every command produces: findings, the report, its JSON form, baselines and diffs,
and the saved-statistics file format."""

from bncheck.report.report import Report
from bncheck.rules.finding import Finding, Severity

__all__ = ["Finding", "Report", "Severity"]
