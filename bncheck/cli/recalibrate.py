"""``bncheck recalibrate``: re-estimate the running statistics on DATA and write the model (:mod:`bncheck.commands.recalibrate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bncheck.cli.command import command
from bncheck.cli.common import choice
from bncheck.cli.model_options import ModelArg, ToOpt, layer_names, model_writing_run
from bncheck.cli.recalibrate_options import ForceWriteOpt, HoldoutOpt, PrecisionOpt, PriorOpt
from bncheck.cli.run_args import RunArgs
from bncheck.commands.recalibrate import METHODS, VARIANCES, RecalibrateOptions
from bncheck.commands.recalibrate import recalibrate as run_recalibrate

app = typer.Typer()


@command(app)
def recalibrate(
    model: ModelArg,
    data: Annotated[str, typer.Argument(help="DATA to estimate the statistics on (as for drift: a folder, a file or an s3://... URL).")],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the recalibrated model (.pt/.pth: same kind as MODEL).")] = None,
    method: Annotated[choice(METHODS), typer.Option("--method", case_sensitive=False, help="exact (default): what inference sees; cumulative: = update_bn; ema: momentum updates.")] = "exact",
    variance: Annotated[choice(VARIANCES), typer.Option("--variance", case_sensitive=False, help="exact: population (default) or unbiased running_var.")] = "population",
    momentum: Annotated[float | None, typer.Option("--momentum", help="ema: momentum (PyTorch convention; default: each layer's own).")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="exact: stop when what OUT's layers see is within this of the written statistics on every channel.")] = 1e-4,
    prior: PriorOpt = 0.0,
    precision: PrecisionOpt = None,
    holdout: HoldoutOpt = None,
    force_write: ForceWriteOpt = False,
    layers: Annotated[str | None, typer.Option("--layers", help="Only recalibrate these BN layers (comma-separated names).")] = None,
    to: ToOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Full drift reports of MODEL and OUT on all of DATA (two more passes) for the before/after figures.")] = False,
    *,
    run: RunArgs,
) -> None:
    """Re-estimate the running statistics of MODEL on DATA and write the result to OUT; the
    report compares drift (and accuracy, with labels) before and after."""
    out, settings, fmt = model_writing_run(
        "recalibrate", "recalibrated model", model, out, gate=run.gate, report=run.report,
        inputs={"DATA": [data], "baseline": [run.report.baseline], "labels": [run.data.labels_path]},
    )
    data_opts = run.data.options(settings.options)
    options = RecalibrateOptions(
        method=method,
        variance=variance,
        momentum=momentum,
        tolerance=tolerance,
        batch_size=data_opts.batch_size,
        limit=data_opts.limit,
        layers=layer_names(layers),
        data_options=data_opts,
        verify=verify,
        prior=prior,
        precision=precision,
        holdout=holdout,
        force_write=force_write,
        progress=run.report.progress(settings),
        device=run.engine.device or "cpu",
        engine=run.engine.build(run.data.workers, data_opts),
        storage_options=run.engine.storage_options(),
    )
    result = run_recalibrate(model, data, out, settings=settings, options=options, to=to, force=force, **run.model.load_kwargs())
    run.report.emit(result, fmt)
