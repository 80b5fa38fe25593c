"""The ``bncheck`` command line: parse options, call the API, render the report.

Every command is declared with ``@command(app)`` and takes the option bundles it shares with
the others (:mod:`bncheck.cli.bundles`); what is left in a command is what only it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from bncheck._version import __version__
from bncheck.backends.output import OUTPUT_KINDS
from bncheck.backends.output_guard import interrupt_on_sigterm
from bncheck.cli.bundles import GateArgs, ModelArgs, ReportArgs
from bncheck.cli.command import command, literal
from bncheck.cli.common import (
    PlotOpt,
    RecordingGroup,
    State,
    choice,
    emit_ranking,
    err,
    parse_class_axis,
    report_width,
)
from bncheck.cli.data_options import DataArgs
from bncheck.cli.engines import EngineArgs, ShardOpt, StatsOpt
from bncheck.cli.engines import register as register_engine_commands
from bncheck.cli.fold_options import FoldCheckArgs
from bncheck.cli.guard import guard_outputs
from bncheck.cli.quiet import quiet_libraries
from bncheck.cli.recalibrate_options import ForceWriteOpt, HoldoutOpt, PrecisionOpt, PriorOpt
from bncheck.cli.reports import register as register_report_commands
from bncheck.cli.settings import register as register_settings_command
from bncheck.commands.audit import audit_models
from bncheck.commands.drift import DriftOptions
from bncheck.commands.drift import drift as run_drift
from bncheck.commands.drift_ranking import rank_models
from bncheck.commands.fold import fold as run_fold
from bncheck.commands.progress import steps
from bncheck.commands.recalibrate import METHODS, VARIANCES, RecalibrateOptions
from bncheck.commands.recalibrate import recalibrate as run_recalibrate
from bncheck.data.shards import parse_shard
from bncheck.errors import UsageError
from bncheck.formats.ranking import check_format as check_ranking_format
from bncheck.rules.docs import render_rule_list
from bncheck.rules.registry import get_rule

app = typer.Typer(
    cls=RecordingGroup,
    name="bncheck",
    help=literal("Diagnostics for the batch-normalization layers of trained networks."),
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelArg = Annotated[Path, typer.Argument(help="Model file: .onnx, .pt/.pth (+ --arch), .pt2, .ts, .safetensors (+ --arch).")]
ToOpt = Annotated[
    choice(OUTPUT_KINDS) | None, typer.Option("--to", case_sensitive=False, help="Output kind (default: from OUT's extension).")
]
LayersOpt = Annotated[str | None, typer.Option("--layers", help="Only these BN layers (comma-separated names).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bncheck {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks on errors (anywhere on the line).")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show the libraries' own warnings and log messages (anywhere on the line).")
    ] = False,
) -> None:
    State.debug, State.verbose = debug, verbose
    quiet_libraries(debug or verbose)  # numpy/PIL/torch warnings and logged tracebacks only under --verbose/--debug
    interrupt_on_sigterm()  # temporary files are removed on SIGTERM as on Ctrl-C


def _layer_names(layers: str | None) -> list[str] | None:
    return [name.strip() for name in layers.split(",") if name.strip()] if layers else None


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


@command(app)
def fold(
    model: ModelArg,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the folded model (.onnx, .pt2, .ts, .safetensors; .pt/.pth = same kind as MODEL)."),
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
    model_args: ModelArgs,
    gate: GateArgs,
    report: ReportArgs,
) -> None:
    """Fold BN layers of MODEL into the conv/linear weights that feed them, write OUT, and
    verify that OUT computes the same function (exit 1 when it does not)."""
    out = model_out(out, report, "folded model")
    settings = gate.settings()
    fmt = report.format(settings, "fold")
    guard_outputs(
        {"--out": out, "--output": report.output},
        models=[model],
        inputs={"DATA": [check.verify], "baseline": [report.baseline]},
        settings=settings,
    )
    with steps(report.progress(settings), "fold"):
        result = run_fold(
            model, out, to=to, affine=affine, force=force, timing=timing, settings=settings,
            **check.fold_kwargs(), **model_args.load_kwargs(),
        )
    report.emit(result, fmt)


#: the extensions of model files: ``-o`` with one of them is the old meaning of ``-o`` in fold/recalibrate
MODEL_SUFFIXES = (".onnx", ".pt", ".pth", ".pt2", ".ts", ".safetensors")


def model_out(out: Path | None, report: ReportArgs, what: str) -> Path:
    """The model file to write. ``-o`` names the report in every command; ``-o MODEL_FILE``
    (the old meaning in fold and recalibrate) is still read as ``--out``, with a warning."""
    if out is None and report.output is not None and Path(report.output).suffix.lower() in MODEL_SUFFIXES:
        err(
            f"warning: -o names the report in every command now; write the {what} with --out {report.output} "
            "(-o MODEL_FILE is read as --out until bncheck 0.3)."
        )
        out, report.output = Path(report.output), None
    if out is None:
        raise UsageError(f"give --out FILE: where to write the {what}.")
    return out


@command(app)
def rules(
    code: Annotated[str | None, typer.Argument(help="A rule code (e.g. BN003) to explain.")] = None,
    fmt: Annotated[choice(("table", "markdown", "json")), typer.Option("--format", "-f", case_sensitive=False, help="Output format.")] = "table",
) -> None:
    """List the rules, or explain one (bncheck rules BN003)."""
    if code:
        typer.echo(get_rule(code).documentation())
        return
    typer.echo(render_rule_list(fmt, width=report_width()))


DriftPathsArg = Annotated[
    list[str],
    typer.Argument(
        metavar="MODEL... DATA",
        help=(
            "MODEL file(s) (as for audit), then DATA: a file or folder (or an s3://, gs://... URL) of images, .npy/.npz/.pt arrays "
            "or .csv/.parquet rows (no DATA with --stats). Several MODELs on one DATA are ranked by how well their stored statistics fit it."
        ),
    ),
]


def _models_and_data(paths: list[str]) -> tuple[list[Path], str | None]:
    """``MODEL DATA`` or ``M1 M2 ... DATA``: DATA is the last of two or more (a lone MODEL: no DATA)."""
    if len(paths) == 1:
        return [Path(paths[0])], None
    return [Path(p) for p in paths[:-1]], paths[-1]


@command(app)
def drift(
    paths: DriftPathsArg,
    train_batch_size: Annotated[
        int | None, typer.Option("--train-batch-size", help="Per-device training batch size for the small-batch analysis (default 16).")
    ] = None,
    mismatch_samples: Annotated[
        int | None, typer.Option("--mismatch-samples", help="Samples for the train-mode analyses BN201/BN301 (default 256; 0 skips them).")
    ] = None,
    diagnosis_samples: Annotated[
        int, typer.Option("--diagnosis-samples", min=0, help="Most samples BN103's input diagnosis reads (default 64; 0 skips it).")
    ] = 64,
    class_axis: Annotated[
        str | None,
        typer.Option(
            "--class-axis",
            help="Class axis of the model's output for BN201/BN301 and accuracy: auto (default: the last axis of (N,C), (N,T,C) or (T,N,C) outputs; none for dense maps), none (compare by relative error), or an axis index of the output (batch axis included).",
        ),
    ] = None,
    layers: LayersOpt = None,
    save_stats: Annotated[Path | None, typer.Option("--save-stats", help="Write the per-channel statistics to FILE.npz or FILE.parquet.")] = None,
    plot: PlotOpt = None,
    channels: Annotated[
        bool, typer.Option("--channels", help="Keep the per-channel statistics in the report (always with --format html).")
    ] = False,
    shard: ShardOpt = None,
    stats: StatsOpt = None,
    *,
    data_args: DataArgs,
    model_args: ModelArgs,
    gate: GateArgs,
    report: ReportArgs,
    engine_args: EngineArgs,
) -> None:
    """Run DATA through MODEL and compare what every BN layer sees with its stored statistics.
    With several MODELs (bncheck drift M1 M2 ... DATA), rank them by how well their stored
    statistics fit DATA, best first; each model's own findings still gate the run."""
    models, data = _models_and_data(paths)
    settings = gate.settings(train_batch_size=train_batch_size, options={"mismatch_samples": mismatch_samples, "class_axis": class_axis})
    fmt = report.format(settings, "drift", plot=plot)
    if len(models) > 1:
        check_ranking(fmt, report, plot)
    guard_outputs(
        {"--output": report.output, "--save-stats": save_stats, "--plot": plot},
        models=models,
        inputs={"DATA": [data], "statistics": [stats], "baseline": [report.baseline], "labels": [data_args.labels_path]},
        settings=settings,
    )
    data_opts = data_args.options(settings.options)
    options = DriftOptions(
        batch_size=data_opts.batch_size,
        limit=data_opts.limit,
        train_batch_size=settings.train_batch_size or 16,
        mismatch_samples=settings.option("mismatch_samples"),
        diagnosis_samples=diagnosis_samples,
        save_stats=save_stats,
        layers=_layer_names(layers),
        data_options=data_opts,
        progress=report.progress(settings),
        channels=channels or fmt == "html",
        device=engine_args.device or "cpu",
        engine=engine_args.build(data_args.workers, data_opts),
        shard=parse_shard(shard),
        stats=stats,
        storage_options=engine_args.storage_options(),
        class_axis=parse_class_axis(settings.option("class_axis")),
    )
    if len(models) > 1:
        emit_ranking(rank_models(models, data, settings=settings, options=options, **model_args.load_kwargs()), fmt, report.path, report.quiet)
    result = run_drift(models[0], data, settings=settings, options=options, **model_args.load_kwargs())
    report.emit(result, fmt, plot=plot)


def check_ranking(fmt: str, report: ReportArgs, plot: Path | None) -> None:
    """Refuse, before any work, what a ranking of several models cannot show."""
    check_ranking_format(fmt)
    if report.baseline is not None:
        raise UsageError("--baseline judges one model; give one MODEL with it.")
    if plot is not None:
        raise UsageError("--plot draws the chart of one model; give one MODEL with it.")


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
    data_args: DataArgs,
    model_args: ModelArgs,
    gate: GateArgs,
    report: ReportArgs,
    engine_args: EngineArgs,
) -> None:
    """Re-estimate the running statistics of MODEL on DATA and write the result to OUT; the
    report compares drift (and accuracy, with labels) before and after."""
    out = model_out(out, report, "recalibrated model")
    settings = gate.settings()
    fmt = report.format(settings, "recalibrate")
    guard_outputs(
        {"--out": out, "--output": report.output},
        models=[model],
        inputs={"DATA": [data], "baseline": [report.baseline], "labels": [data_args.labels_path]},
        settings=settings,
    )
    data_opts = data_args.options(settings.options)
    options = RecalibrateOptions(
        method=method,
        variance=variance,
        momentum=momentum,
        tolerance=tolerance,
        batch_size=data_opts.batch_size,
        limit=data_opts.limit,
        layers=_layer_names(layers),
        data_options=data_opts,
        verify=verify,
        prior=prior,
        precision=precision,
        holdout=holdout,
        force_write=force_write,
        progress=report.progress(settings),
        device=engine_args.device or "cpu",
        engine=engine_args.build(data_args.workers, data_opts),
        storage_options=engine_args.storage_options(),
    )
    result = run_recalibrate(model, data, out, settings=settings, options=options, to=to, force=force, **model_args.load_kwargs())
    report.emit(result, fmt)


register_report_commands(app)  # report, diff, schema (bncheck/cli/reports.py)
register_engine_commands(app)  # merge (bncheck/cli/engines.py)
register_settings_command(app)  # config (bncheck/cli/settings.py)


def run(args: Sequence[str] | None = None) -> None:
    """Run the app on ``args`` (default: the process's arguments)."""
    app(args=None if args is None else list(args), prog_name="bncheck")


def main() -> None:
    run()
