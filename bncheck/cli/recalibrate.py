"""``bncheck recalibrate``: re-estimate the running statistics on DATA and write the model (:mod:`bncheck.commands.recalibrate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bncheck.cli.command import command
from bncheck.cli.common import output_file
from bncheck.cli.model_options import ModelArg, ToOpt, layer_names, model_writing_run
from bncheck.cli.recalibrate_options import EstimateArgs
from bncheck.cli.run_args import ModelRunArgs
from bncheck.commands.recalibrate import RecalibrateOptions
from bncheck.commands.recalibrate import recalibrate as run_recalibrate

app = typer.Typer()


@command(app)
def recalibrate(
    model: ModelArg,
    data: Annotated[str, typer.Argument(metavar="DATA", help="DATA to estimate the statistics on (as for drift: a folder, a file or an s3://... URL).")],
    out: Annotated[Path | None, output_file("--out", help="Where to write the recalibrated model (.pt/.pth: same kind as MODEL).")] = None,
    *,
    estimate: EstimateArgs,
    layers: Annotated[str | None, typer.Option("--layers", help="Only recalibrate these BN layers (comma-separated names).")] = None,
    to: ToOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Full drift reports of MODEL and OUT on all of DATA (two more passes) for the before/after figures.")] = False,
    run: ModelRunArgs,
) -> None:
    """Re-estimate the running statistics of MODEL on DATA and write the result to OUT; the
    report compares drift (and accuracy, with labels) before and after."""
    out, settings, fmt = model_writing_run(
        "recalibrate", "recalibrated model", model, out, gate=run.gate, report=run.report,
        inputs={"DATA": [data], "baseline": [run.report.baseline], "labels": [run.data.labels_path]},
    )
    options = RecalibrateOptions(**estimate.options(), **run.pass_options(settings), layers=layer_names(layers), verify=verify)
    result = run_recalibrate(model, data, out, settings=settings, options=options, to=to, force=force, **run.model.load_kwargs())
    run.report.emit(result, fmt)
