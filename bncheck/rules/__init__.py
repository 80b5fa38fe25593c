"""The rule registry. Importing this package registers every built-in rule: each phase's
module (model, audit, drift, fold, recalibrate) is imported once, here, and its ``@rule`` functions register
themselves."""

from bncheck.rules import audit, drift, fold, model, recalibrate  # noqa: F401  (registration)
from bncheck.rules.context import (
    DriftEvidence,
    FoldEvidence,
    RecalibrationEvidence,
    RuleContext,
    Verification,
)
from bncheck.rules.registry import REGISTRY, Rule, default_thresholds, get_rule, rule, select_rules
from bncheck.rules.run import run_codes, run_rules

__all__ = [
    "REGISTRY",
    "DriftEvidence",
    "FoldEvidence",
    "RecalibrationEvidence",
    "Rule",
    "RuleContext",
    "Verification",
    "default_thresholds",
    "get_rule",
    "rule",
    "run_codes",
    "run_rules",
    "select_rules",
]
