"""``bncheck audit``: static checks of every BN layer, no data needed."""

from __future__ import annotations

from typing import Any

from bncheck.backends.load import as_source
from bncheck.config import Settings
from bncheck.report.report import Report
from bncheck.rules.finding import Finding
from bncheck.rules.registry import RuleContext, select_rules


def run_rules(phase: str | tuple[str, ...], ctx: RuleContext, settings: Settings) -> list[Finding]:
    """Run the selected rules of ``phase``; findings in network order, model-level ones first."""
    findings: list[Finding] = []
    for r in select_rules(phase, settings.select, settings.ignore):
        findings.extend(r.run(ctx))
    order = {layer.name: i for i, layer in enumerate(ctx.layers)}
    findings.sort(key=lambda f: (order.get(f.layer, -1), -f.severity.rank, f.rule))
    return findings


def audit(
    model: Any,
    *,
    settings: Settings | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
) -> Report:
    """Audit ``model`` (a path, nn.Module, ExportedProgram, onnx.ModelProto or ModelSource)."""
    import bncheck.rules  # noqa: F401  (registers the rules)

    settings = settings or Settings()
    source = as_source(model, arch=arch, trust_pickle=trust_pickle)
    layers = source.bn_layers()
    ctx = RuleContext(
        layers=layers,
        thresholds=settings.threshold_table(),
        model_format=source.format,
        train_batch_size=settings.train_batch_size,
    )
    findings = run_rules("audit", ctx, settings)
    report = Report(command="audit", model=source.info(), layers=layers, findings=findings, fail_on=settings.fail_on)
    if not layers:
        report.notes.append(f"no batch-norm layers found (the model has {source.op_count()} ops/modules)")
    return report
