"""``bncheck audit``: static checks of every BN layer, no data needed; :func:`audit_models`
audits several models (one report each, the gate failing when any report fails)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bncheck.backends.load import as_source, takes_arch
from bncheck.commands.progress import step
from bncheck.config import Settings
from bncheck.errors import BncheckError
from bncheck.report.report import Report
from bncheck.rules import RuleContext, run_rules


def audit(
    model: Any,
    *,
    settings: Settings | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
) -> Report:
    """Audit ``model`` (a path, nn.Module, ExportedProgram, onnx.ModelProto or ModelSource)."""
    settings = settings or Settings()
    source = as_source(model, arch=arch, trust_pickle=trust_pickle)
    layers = source.bn_layers()
    step(f"checking {len(layers)} BN layer(s)")
    ctx = RuleContext(
        layers=layers,
        thresholds=settings.threshold_table(),
        model_format=source.format,
        train_batch_size=settings.train_batch_size,
        op_count=source.op_count(),
    )
    findings = run_rules(("model", "audit"), ctx, select=settings.select, ignore=settings.ignore)
    report = Report(command="audit", model=source.info(), layers=layers, findings=findings, fail_on=settings.fail_on)
    if not layers:
        report.notes.append(f"no batch-norm layers found (the model has {source.op_count()} ops/modules)")
    return report


def audit_models(
    models: Iterable[Any],
    *,
    settings: Settings | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
) -> list[Report]:
    """One :func:`audit` report per model, in order (``bncheck audit A.onnx B.onnx``). The
    combined gate fails when any report fails: :func:`combined_exit_code`."""
    models = list(models)
    archs = _archs(models, arch)
    reports = []
    for number, model in enumerate(models, 1):
        step("loading the model" if len(models) == 1 else f"loading model {number}/{len(models)}: {model}")
        reports.append(audit(model, settings=settings, arch=archs[number - 1], trust_pickle=trust_pickle))
    return reports


def _archs(models: list[Any], arch: str | None) -> list[str | None]:
    """``--arch`` for each model: with several (a pre-commit hook's staged files), the state
    dicts among them; every model when it means something for none or there is one (whose
    loading then says so)."""
    if arch is None or len(models) == 1:
        return [arch] * len(models)
    applies = [_takes_arch(model) for model in models]
    return [arch if ok else None for ok in applies] if any(applies) else [arch] * len(models)


def _takes_arch(model: Any) -> bool:
    try:
        return takes_arch(model)
    except BncheckError:
        return True  # loading says what is wrong with the file


def combined_exit_code(reports: Iterable[Report]) -> int:
    """1 when any report fails its gate, else 0."""
    return max((report.exit_code for report in reports), default=0)
