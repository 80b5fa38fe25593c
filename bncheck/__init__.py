"""bncheck: diagnostics for the batch-normalization layers of trained neural networks.

The Python API returns the same report objects the CLI renders::

    import bncheck
    report = bncheck.audit("model.onnx")
    report.passed, report.to_frame(), report.to_json()
    report.save("report.html")                    # any format, by extension
    report.with_baseline("release.json").passed   # the gate against an earlier run
    bncheck.diff("release.json", "candidate.json").to_frame()
    bncheck.load_report("run.json").render("sarif")

The names below are imported on first use (PEP 562), so ``import bncheck`` and
``bncheck --version`` stay fast; ``from bncheck import audit`` works as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bncheck._version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "BNLayer": "bncheck.layer",
    "BncheckError": "bncheck.errors",
    "DriftOptions": "bncheck.commands.drift",
    "DriftResult": "bncheck.report.results",
    "Finding": "bncheck.rules.finding",
    "FoldResult": "bncheck.report.results",
    "Ranking": "bncheck.report.ranking",
    "RecalibrateOptions": "bncheck.commands.recalibrate",
    "RecalibrationResult": "bncheck.report.results",
    "Report": "bncheck.report.report",
    "ReportDiff": "bncheck.report.diff",
    "Settings": "bncheck.config",
    "Severity": "bncheck.rules.finding",
    "audit": "bncheck.commands.audit",
    "diff": "bncheck.report.diff",
    "drift": "bncheck.commands.drift",
    "fold": "bncheck.commands.fold",
    "load_folded_state_dict": "bncheck.commands.fold",
    "load_model": "bncheck.backends",
    "load_report": "bncheck.report.io",
    "load_settings": "bncheck.config",
    "rank_models": "bncheck.commands.drift_ranking",
    "recalibrate": "bncheck.commands.recalibrate",
}

__all__ = [
    "__version__",
    "BNLayer",
    "BncheckError",
    "DriftOptions",
    "DriftResult",
    "Finding",
    "FoldResult",
    "Ranking",
    "RecalibrateOptions",
    "RecalibrationResult",
    "Report",
    "ReportDiff",
    "Settings",
    "Severity",
    "audit",
    "diff",
    "drift",
    "fold",
    "load_folded_state_dict",
    "load_model",
    "load_report",
    "load_settings",
    "rank_models",
    "recalibrate",
]

#: subpackages reachable as attributes after a bare ``import bncheck`` (``bncheck.report.diff``)
_SUBMODULES = ("backends", "commands", "config", "data", "engines", "errors", "formats", "layer", "numerics", "report", "rules")

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports them
    from bncheck.backends import load_model
    from bncheck.commands.audit import audit
    from bncheck.commands.drift import DriftOptions, drift
    from bncheck.commands.drift_ranking import rank_models
    from bncheck.commands.fold import fold, load_folded_state_dict
    from bncheck.commands.recalibrate import RecalibrateOptions, recalibrate
    from bncheck.config import Settings, load_settings
    from bncheck.errors import BncheckError
    from bncheck.layer import BNLayer
    from bncheck.report.diff import ReportDiff, diff
    from bncheck.report.io import load_report
    from bncheck.report.ranking import Ranking
    from bncheck.report.report import Report
    from bncheck.report.results import DriftResult, FoldResult, RecalibrationResult
    from bncheck.rules.finding import Finding, Severity


def __getattr__(name: str) -> Any:
    """``bncheck.audit`` and the other public names, imported on first access (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"bncheck.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bncheck' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_SUBMODULES})
