"""bncheck: diagnostics for the batch-normalization layers of trained neural networks.

The Python API returns the same report objects the CLI renders::

    import bncheck
    report = bncheck.audit("model.onnx")
    report.passed, report.to_frame(), report.to_json()
    report.save("report.html")                    # any format, by extension
    report.with_baseline("release.json").passed   # the gate against an earlier run
    bncheck.diff("release.json", "candidate.json").to_frame()
    bncheck.load_report("run.json").render("sarif")
"""

from bncheck._version import __version__
from bncheck.audit import audit
from bncheck.config import Settings, load_settings
from bncheck.diff import ReportDiff, diff
from bncheck.drift import DriftOptions, drift
from bncheck.errors import BncheckError
from bncheck.findings import Finding, Severity
from bncheck.fold import fold
from bncheck.layers import BNLayer
from bncheck.recalibrate import RecalibrateOptions, recalibrate
from bncheck.report import Report
from bncheck.report_io import load_report
from bncheck.sources import load_model

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
    "fold",
    "load_model",
    "load_report",
    "load_settings",
    "recalibrate",
    "RecalibrateOptions",
]
