"""Running the rules of one phase on a :class:`~bncheck.rules.context.RuleContext`."""

from __future__ import annotations

from collections.abc import Iterable

from bncheck.rules.context import RuleContext
from bncheck.rules.finding import Finding
from bncheck.rules.registry import select_rules


def run_rules(
    phase: str | tuple[str, ...], ctx: RuleContext, *, select: Iterable[str] = (), ignore: Iterable[str] = ()
) -> list[Finding]:
    """Run the rules of ``phase`` chosen by ``select``/``ignore`` (code prefixes); findings in
    network order, model-level ones first."""
    findings: list[Finding] = []
    for r in select_rules(phase, select, ignore):
        findings.extend(r.run(ctx))
    order = {layer.name: i for i, layer in enumerate(ctx.layers)}
    findings.sort(key=lambda f: (order.get(f.layer, -1), -f.severity.rank, f.rule))
    return findings


def run_codes(phase: str, codes: Iterable[str], ctx: RuleContext, *, ignore: Iterable[str] = ()) -> list[Finding]:
    """The findings of the rules ``codes`` of ``phase`` (less those ignored), in code order."""
    findings: list[Finding] = []
    for r in select_rules(phase, tuple(codes), ignore):
        findings.extend(r.run(ctx))
    return findings
