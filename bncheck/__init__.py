"""bncheck: diagnostics for the batch-normalization layers of trained neural networks.

The Python API returns the same report objects the CLI renders::

    import bncheck
    report = bncheck.audit("model.onnx")
    report.passed, report.to_frame(), report.to_json()
"""

from bncheck._version import __version__
from bncheck.audit import audit
from bncheck.config import Settings, load_settings
from bncheck.drift import DriftOptions, drift
from bncheck.errors import BncheckError
from bncheck.findings import Finding, Severity
from bncheck.fold import fold
from bncheck.layers import BNLayer
from bncheck.recalibrate import RecalibrateOptions, recalibrate
from bncheck.report import Report
from bncheck.sources import load_model

__all__ = [
    "BNLayer",
    "BncheckError",
    "Finding",
    "Report",
    "Settings",
    "Severity",
    "__version__",
    "audit",
    "drift",
    "DriftOptions",
    "fold",
    "load_model",
    "load_settings",
    "recalibrate",
    "RecalibrateOptions",
]
