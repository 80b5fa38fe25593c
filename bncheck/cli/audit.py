"""``bncheck audit``: static checks of every BN layer, no data needed (:mod:`bncheck.commands.audit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bncheck.cli.bundles import GateArgs, ModelArgs, ReportArgs
from bncheck.cli.command import command
from bncheck.cli.guard import guard_outputs
from bncheck.commands.audit import audit_models
from bncheck.commands.progress import steps

app = typer.Typer()


@command(app)
def audit(
    models: Annotated[
        list[Path],
        typer.Argument(metavar="MODEL...", help="Model file(s): .onnx, .pt/.pth, .pt2, .ts, .safetensors; several give one report each, failing when any fails."),
    ],
    train_batch_size: Annotated[
        int | None, typer.Option("--train-batch-size", help="Per-device training batch size (feeds BN010).")
    ] = None,
    *,
    model_args: ModelArgs,
    gate: GateArgs,
    report: ReportArgs,
) -> None:
    """Static checks of every batch-norm layer of MODEL (no data needed); several MODELs give one report each."""
    settings = gate.settings(train_batch_size=train_batch_size)
    fmt = report.format(settings, "audit")
    guard_outputs({"--output": report.output}, models=models, inputs={"baseline": [report.baseline]}, settings=settings)
    with steps(report.progress(settings), "audit"):
        results = audit_models(models, settings=settings, **model_args.load_kwargs())
    if len(models) > 1:
        report.emit_many(results, fmt)
    report.emit(results[0], fmt)
