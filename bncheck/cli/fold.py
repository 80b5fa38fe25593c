"""``bncheck fold``: fold BN layers into the weights that feed them, write and verify the result (:mod:`bncheck.commands.fold`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bncheck.cli.bundles import GateArgs, ModelArgs, ModelReportArgs
from bncheck.cli.command import command
from bncheck.cli.common import output_file
from bncheck.cli.fold_options import FoldCheckArgs, VerifyDataArgs
from bncheck.cli.model_options import ModelArg, ToOpt, model_writing_run
from bncheck.commands.fold import fold as run_fold
from bncheck.commands.progress import steps
from bncheck.errors import BncheckError

app = typer.Typer()


@command(app)
def fold(
    model: ModelArg,
    out: Annotated[
        Path | None,
        output_file("--out", help="Where to write the folded model (.onnx, .pt2, .ts, .safetensors; .pt/.pth = same kind as MODEL)."),
    ] = None,
    to: ToOpt = None,
    affine: Annotated[
        bool, typer.Option("--affine", help="Turn BN layers that cannot be folded into a per-channel multiply-add.")
    ] = False,
    *,
    check: FoldCheckArgs,
    force: Annotated[
        bool,
        typer.Option("--force", help="Overwrite OUT; fold despite BN001/BN002/BN004; write OUT even if nothing was folded or verification failed."),
    ] = False,
    timing: Annotated[
        bool | None,
        typer.Option("--timing/--no-timing", help="Measure the inference speedup (default: on for PyTorch; off for ONNX, which onnxruntime fuses itself)."),
    ] = None,
    data: VerifyDataArgs,
    model_args: ModelArgs,
    gate: GateArgs,
    report: ModelReportArgs,
) -> None:
    """Fold BN layers of MODEL into the conv/linear weights that feed them, write OUT, and
    verify that OUT computes the same function (exit 1 when it does not)."""
    out, settings, fmt = model_writing_run(
        "fold", "folded model", model, out, gate=gate, report=report,
        inputs={"DATA": [check.verify], "baseline": [report.baseline]},
    )
    given = data.given()
    if given and check.verify is None:
        raise BncheckError(f"--{next(iter(given)).replace('_', '-')} says how --verify DATA is read; give --verify DATA, or drop it.")
    settings.options.update(given)  # over the config file's data options, as drift's options are
    with steps(report.progress(settings), "fold"):
        result = run_fold(
            model, out, to=to, affine=affine, force=force, timing=timing, settings=settings,
            **check.fold_kwargs(), **model_args.load_kwargs(),
        )
    report.emit(result, fmt)
