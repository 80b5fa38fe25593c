"""bncheck: diagnostics for the batch-normalization layers of trained neural networks.

The Python API returns the same report objects the CLI renders::

    import bncheck
    report = bncheck.commands.audit("model.onnx")
    report.passed, report.to_frame(), report.to_json()
    report.save("report.html")                    # any format, by extension
    report.with_baseline("release.json").passed   # the gate against an earlier run
    bncheck.report.diff("release.json", "candidate.json").to_frame()
    bncheck.load_report("run.json").render("sarif")
"""

from bncheck._version import __version__
from bncheck.backends import load_model
from bncheck.commands.audit import audit
from bncheck.commands.drift import DriftOptions, drift
from bncheck.commands.fold import fold, load_folded_state_dict
from bncheck.commands.recalibrate import RecalibrateOptions, recalibrate
from bncheck.config import Settings, load_settings
from bncheck.errors import BncheckError
from bncheck.layer import BNLayer
from bncheck.report.diff import ReportDiff, diff
from bncheck.report.io import load_report
from bncheck.report.report import Report
from bncheck.report.results import DriftResult, FoldResult, RecalibrationResult
from bncheck.rules.finding import Finding, Severity

__all__ = [
    "BNLayer",
    "BncheckError",
    "Finding",
    "Report",
    "ReportDiff",
    "Settings",
    "Severity",
    "__version__",
    "audit",
    "diff",
    "drift",
    "DriftOptions",
    "DriftResult",
    "FoldResult",
    "RecalibrationResult",
    "fold",
    "load_folded_state_dict",
    "load_model",
    "load_report",
    "load_settings",
    "recalibrate",
    "RecalibrateOptions",
]
