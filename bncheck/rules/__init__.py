"""The rule registry. Importing this package registers every built-in rule."""

from bncheck.rules.registry import REGISTRY, Rule, RuleContext, get_rule, rule, select_rules

# Registration happens on import; keep these imports.
from bncheck.rules import audit, drift, fold  # noqa: E402,F401  isort: skip

__all__ = ["REGISTRY", "Rule", "RuleContext", "get_rule", "rule", "select_rules"]
