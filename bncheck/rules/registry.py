"""Rules: a stable code, a default severity, documented thresholds and a check function.

A rule is one function decorated with :func:`rule`; adding a rule means writing one
function in one module. ``bncheck rules CODE`` prints its documentation.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bncheck.errors import UsageError
from bncheck.rules.context import RuleContext
from bncheck.rules.finding import Finding, Severity


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: Severity
    summary: str
    what: str
    why: str
    example: str
    fix: str
    phase: str  # "audit" or "drift"
    check: Callable[[Rule, RuleContext], Iterable[Finding]]
    thresholds: dict[str, float] = field(default_factory=dict)
    threshold_docs: dict[str, str] = field(default_factory=dict)
    #: papers, issue threads or documentation the rule rests on
    references: tuple[str, ...] = ()

    def run(self, ctx: RuleContext) -> Iterator[Finding]:
        yield from self.check(self, ctx)

    def finding(self, layer: str | None, message: str, severity: Severity | None = None, **details: Any) -> Finding:
        return Finding(
            rule=self.code,
            severity=severity or self.severity,
            layer=layer,
            message=message,
            details=_plain(details),
        )

    def documentation(self) -> str:
        """The four-part explanation printed by ``bncheck rules CODE``."""
        parts = [
            f"{self.code} ({self.name}) — default severity: {self.severity.value}",
            "",
            self.summary,
            "",
            "What it does",
            _indent(self.what),
            "",
            "Why is this bad?",
            _indent(self.why),
            "",
            "Example",
            _indent(self.example),
            "",
            "How to fix",
            _indent(self.fix),
        ]
        if self.thresholds:
            parts += ["", "Thresholds (set with --threshold CODE.NAME=VALUE or [tool.bncheck.thresholds])"]
            for key, value in self.thresholds.items():
                doc = self.threshold_docs.get(key, "")
                parts.append(f"    {self.code}.{key} = {value:g}    {doc}")
        if self.references:
            parts += ["", "References"] + [f"    {ref}" for ref in self.references]
        return "\n".join(parts)


REGISTRY: dict[str, Rule] = {}


def rule(
    *,
    code: str,
    name: str,
    severity: str,
    summary: str,
    what: str,
    why: str,
    example: str,
    fix: str,
    phase: str,
    thresholds: dict[str, float] | None = None,
    threshold_docs: dict[str, str] | None = None,
    references: tuple[str, ...] | list[str] = (),
):
    """Register the decorated ``check(rule, ctx)`` function as a rule."""

    def decorate(func: Callable[[Rule, RuleContext], Iterable[Finding]]):
        if code in REGISTRY:
            raise RuntimeError(f"rule {code} registered twice")
        REGISTRY[code] = Rule(
            code=code,
            name=name,
            severity=Severity(severity),
            summary=summary,
            what=_reflow(what),
            why=_reflow(why),
            example=_reflow(example),
            fix=_reflow(fix),
            phase=phase,
            check=func,
            thresholds=dict(thresholds or {}),
            threshold_docs=dict(threshold_docs or {}),
            references=tuple(references),
        )
        return func

    return decorate


def get_rule(code: str) -> Rule:
    code = code.strip().upper()
    if code not in REGISTRY:
        raise UsageError(f"unknown rule {code}; `bncheck rules` lists them.")
    return REGISTRY[code]


def _matches(code: str, patterns: Iterable[str]) -> bool:
    return any(code.startswith(p) for p in patterns)


def unmatched(patterns: Iterable[str]) -> str | None:
    """The first code prefix of ``patterns`` that matches no rule (None when all match)."""
    return next((p for p in patterns if not any(code.startswith(p.strip().upper()) for code in REGISTRY)), None)


def select_rules(phase: str | Iterable[str], select: Iterable[str] = (), ignore: Iterable[str] = ()) -> list[Rule]:
    """Rules of ``phase`` filtered by code prefixes (``BN0`` selects all audit rules)."""
    phases = {phase} if isinstance(phase, str) else set(phase)
    select = [s.strip().upper() for s in select if s.strip()]
    ignore = [s.strip().upper() for s in ignore if s.strip()]
    pattern = unmatched([*select, *ignore])
    if pattern is not None:
        raise UsageError(f"--select/--ignore: {pattern} matches no rule; `bncheck rules` lists them.")
    chosen = []
    for code in sorted(REGISTRY):
        r = REGISTRY[code]
        if r.phase not in phases:
            continue
        if select and not _matches(code, select):
            continue
        if _matches(code, ignore):
            continue
        chosen.append(r)
    return chosen


def default_thresholds() -> dict[str, dict[str, float]]:
    return {code: dict(r.thresholds) for code, r in REGISTRY.items() if r.thresholds}


def _reflow(text: str) -> str:
    """Collapse the source indentation of a docstring-like text into plain paragraphs."""
    paragraphs = [" ".join(line.strip() for line in block.splitlines()) for block in text.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def _indent(text: str) -> str:
    text = "\n\n".join(textwrap.fill(p, 88) for p in text.split("\n\n"))
    return textwrap.indent(text, "    ")


def _plain(value: Any) -> Any:
    """JSON-friendly copies of numpy scalars/arrays in finding details."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value
