"""The ``bncheck`` command line: parse options, call the API, render the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bncheck._version import __version__
from bncheck.backends.output_guard import interrupt_on_sigterm
from bncheck.cli.common import (
    ArchOpt,
    BaselineOpt,
    ConfigOpt,
    FailOnOpt,
    FormatOpt,
    IgnoreOpt,
    OutputOpt,
    PlotOpt,
    QuietOpt,
    RecordingGroup,
    SelectOpt,
    State,
    ThresholdOpt,
    TrustPickleOpt,
    choose_format,
    emit,
    emit_many,
    handle_errors,
)
from bncheck.cli.data_options import (
    ArraysOpt,
    ChannelOrderOpt,
    ColumnsOpt,
    CropOpt,
    GrayscaleOpt,
    LabelsOpt,
    LayoutOpt,
    LimitOpt,
    MeanOpt,
    NanOpt,
    PreprocessOpt,
    ScaleOpt,
    SizeOpt,
    StdOpt,
    StrictOpt,
    WorkersOpt,
)
from bncheck.cli.engines import EngineOpt, RayAddressOpt, ShardOpt, StatsOpt, StorageOpt
from bncheck.cli.engines import register as register_engine_commands
from bncheck.cli.guard import guard_outputs, labels_file, report_path
from bncheck.cli.quiet import quiet_libraries
from bncheck.cli.recalibrate_options import (
    DeviceOpt,
    ForceWriteOpt,
    HoldoutOpt,
    PrecisionOpt,
    PriorOpt,
)
from bncheck.cli.reports import register as register_report_commands
from bncheck.errors import UsageError as BncheckUsageError

app = typer.Typer(
    cls=RecordingGroup,
    name="bncheck",
    help="Diagnostics for the batch-normalization layers of trained networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bncheck {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks on errors.")] = False,
) -> None:
    State.debug = debug
    quiet_libraries(debug)  # numpy/PIL/torch warnings and logged tracebacks only under --debug
    interrupt_on_sigterm()  # temporary files are removed on SIGTERM as on Ctrl-C


@app.command()
@handle_errors
def audit(
    models: Annotated[
        list[Path], typer.Argument(metavar="MODEL...", help="Model file(s): .onnx, .pt/.pth, .pt2, .ts, .safetensors; several give one report each, failing when any fails.")
    ],
    arch: ArchOpt = None,
    trust_pickle: TrustPickleOpt = False,
    train_batch_size: Annotated[
        int | None, typer.Option("--train-batch-size", help="Per-device training batch size (feeds BN010).")
    ] = None,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    fail_on: FailOnOpt = None,
    select: SelectOpt = None,
    ignore: IgnoreOpt = None,
    threshold: ThresholdOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    baseline: BaselineOpt = None,
) -> None:
    """Static checks of every batch-norm layer of MODEL (no data needed); several MODELs give one report each."""
    from bncheck.commands.audit import audit as run_audit
    from bncheck.commands.audit import audit_models
    from bncheck.config import load_settings

    settings = load_settings(
        config,
        fail_on=fail_on,
        select=select,
        ignore=ignore,
        thresholds=threshold,
        train_batch_size=train_batch_size,
    )
    fmt = choose_format(fmt, report_path(output), settings.options.get("format"), command="audit", baseline=baseline)
    guard_outputs({"--output": output}, models=models, inputs={"baseline": [baseline]}, settings=settings)
    output = report_path(output)
    if len(models) > 1:
        if baseline is not None:
            raise BncheckUsageError("--baseline judges one model; give one MODEL with it.")
        emit_many(audit_models(models, settings=settings, arch=arch, trust_pickle=trust_pickle), fmt, output, quiet)
    report = run_audit(models[0], settings=settings, arch=arch, trust_pickle=trust_pickle)
    emit(report, fmt, output, quiet, baseline=baseline)


@app.command()
@handle_errors
def fold(
    model: Annotated[Path, typer.Argument(help="Model file: .onnx, .pt/.pth (+ --arch), .pt2, .ts, .safetensors (+ --arch).")],
    out: Annotated[
        Path,
        typer.Option("-o", "--out", help="Where to write the folded model (.onnx, .pt2, .ts, .safetensors; .pt/.pth = same kind as MODEL)."),
    ],
    to: Annotated[
        str | None, typer.Option("--to", help="Output kind: onnx|export|torchscript|state-dict (default: from OUT's extension).")
    ] = None,
    affine: Annotated[
        bool, typer.Option("--affine", help="Turn BN layers that cannot be folded into a per-channel multiply-add.")
    ] = False,
    verify: Annotated[
        Path | None, typer.Option("--verify", help="DATA to verify the folded model on (default: random inputs).")
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option("--input-shape", help="Input shape for random verification inputs, e.g. 1,3,224,224 (';' between inputs)."),
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", help="Verification samples (default: 8 random, or the first 256 of DATA).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for DATA.")] = 32,
    atol: Annotated[float | None, typer.Option("--atol", help="Absolute tolerance (default 1e-4; 1e-2 for float16).")] = None,
    rtol: Annotated[
        float | None, typer.Option("--rtol", help="Relative tolerance, against max|output| (default 1e-4; 1e-2 for float16).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Overwrite OUT; fold despite BN001/BN002/BN004; write OUT even if nothing was folded or verification failed."),
    ] = False,
    timing: Annotated[bool, typer.Option("--timing/--no-timing", help="Measure the inference speedup.")] = True,
    arch: ArchOpt = None,
    trust_pickle: TrustPickleOpt = False,
    fmt: FormatOpt = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write the report to FILE instead of stdout.")] = None,
    fail_on: FailOnOpt = None,
    select: SelectOpt = None,
    ignore: IgnoreOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    baseline: BaselineOpt = None,
) -> None:
    """Fold BN layers of MODEL into the conv/linear weights that feed them, write OUT, and
    verify that OUT computes the same function (exit 1 when it does not)."""
    from bncheck.commands.fold import fold as run_fold
    from bncheck.config import load_settings

    settings = load_settings(config, fail_on=fail_on, select=select, ignore=ignore)
    fmt = choose_format(fmt, report_path(output), settings.options.get("format"), command="fold", baseline=baseline)
    guard_outputs({"-o/--out": out, "--output": output}, models=[model], inputs={"DATA": [verify], "baseline": [baseline]}, settings=settings)
    output = report_path(output)
    report = run_fold(
        model,
        out,
        to=to,
        affine=affine,
        verify=verify,
        input_shape=input_shape,
        samples=samples,
        batch_size=batch_size,
        atol=atol,
        rtol=rtol,
        force=force,
        timing=timing,
        settings=settings,
        arch=arch,
        trust_pickle=trust_pickle,
    )
    emit(report, fmt, output, quiet, baseline=baseline)


@app.command()
@handle_errors
def rules(
    code: Annotated[str | None, typer.Argument(help="A rule code (e.g. BN003) to explain.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table|markdown|json")] = "table",
) -> None:
    """List the rules, or explain one (``bncheck rules BN003``)."""
    from bncheck.rules.docs import render_rule_list
    from bncheck.rules.registry import get_rule

    if code:
        typer.echo(get_rule(code).documentation())
        return
    typer.echo(render_rule_list(fmt))


@app.command()
@handle_errors
def drift(
    model: Annotated[Path, typer.Argument(help="Model file: .onnx, .pt/.pth (+ --arch), .pt2, .ts, .safetensors (+ --arch).")],
    data: Annotated[
        str | None,
        typer.Argument(help="DATA: a file or folder (or an s3://, gs://... URL) of images, .npy/.npz/.pt arrays or .csv/.parquet rows; not with --stats."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Inference batch size (default 32).")] = None,
    train_batch_size: Annotated[
        int | None, typer.Option("--train-batch-size", help="Per-device training batch size for the small-batch analysis (default 16).")
    ] = None,
    mismatch_samples: Annotated[
        int | None, typer.Option("--mismatch-samples", help="Samples for the train-mode analyses BN201/BN301 (default 256; 0 skips them).")
    ] = None,
    layers: Annotated[str | None, typer.Option("--layers", help="Only these BN layers (comma-separated names).")] = None,
    save_stats: Annotated[Path | None, typer.Option("--save-stats", help="Write the per-channel statistics to FILE.npz or FILE.parquet.")] = None,
    size: SizeOpt = None,
    crop: CropOpt = None,
    scale: ScaleOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    channel_order: ChannelOrderOpt = None,
    grayscale: GrayscaleOpt = None,
    layout: LayoutOpt = None,
    columns: ColumnsOpt = None,
    preprocess: PreprocessOpt = None,
    labels: LabelsOpt = None,
    limit: LimitOpt = None,
    strict: StrictOpt = False,
    nan: NanOpt = None,
    workers: WorkersOpt = None,
    arrays: ArraysOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustPickleOpt = False,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    fail_on: FailOnOpt = None,
    select: SelectOpt = None,
    ignore: IgnoreOpt = None,
    threshold: ThresholdOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    baseline: BaselineOpt = None,
    plot: PlotOpt = None,
    channels: Annotated[
        bool, typer.Option("--channels", help="Keep the per-channel statistics in the report (always with --format html).")
    ] = False,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    shard: ShardOpt = None,
    storage_option: StorageOpt = None,
    stats: StatsOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Run DATA through MODEL and compare what every BN layer sees with its stored statistics."""
    import sys

    from bncheck.cli.data_options import data_options
    from bncheck.commands.drift import DriftOptions
    from bncheck.commands.drift import drift as run_drift
    from bncheck.config import load_settings

    settings = load_settings(config, fail_on=fail_on, select=select, ignore=ignore, thresholds=threshold, train_batch_size=train_batch_size)
    fmt = choose_format(fmt, report_path(output), settings.options.get("format"), command="drift", baseline=baseline, plot=plot)
    guard_outputs(
        {"--output": output, "--save-stats": save_stats, "--plot": plot},
        models=[model],
        inputs={"DATA": [data], "statistics": [stats], "baseline": [baseline], "labels": [labels_file(labels)]},
        settings=settings,
    )
    output = report_path(output)
    opts = settings.options
    data_opts = data_options(
        opts,
        size=size, crop=crop, scale=scale, mean=mean, std=std, channel_order=channel_order, grayscale=grayscale,
        layout=layout, columns=columns, preprocess=preprocess, labels=labels, limit=limit, strict=strict, nan=nan,
        workers=workers, arrays=arrays, batch_size=batch_size,
    )
    options = DriftOptions(
        batch_size=data_opts.batch_size,
        limit=data_opts.limit,
        train_batch_size=settings.train_batch_size or 16,
        mismatch_samples=mismatch_samples if mismatch_samples is not None else int(opts.get("mismatch_samples", 256)),
        save_stats=save_stats,
        layers=[name.strip() for name in layers.split(",") if name.strip()] if layers else None,
        data_options=data_opts,
        progress=not quiet and sys.stderr.isatty(),
        channels=channels or fmt == "html",
        device=device or "cpu",
    )
    from bncheck.cli.engines import engine_options
    from bncheck.data.remote import parse_storage_options
    from bncheck.data.shards import parse_shard

    options.engine = engine_options(engine, ray_address, workers, data_opts)
    options.shard = parse_shard(shard)
    options.storage_options = parse_storage_options(storage_option)
    options.stats = stats
    if options.mismatch_samples < 0:
        from bncheck.errors import UsageError

        raise UsageError("--mismatch-samples must be 0 or more.")
    report = run_drift(model, data, settings=settings, options=options, arch=arch, trust_pickle=trust_pickle)
    emit(report, fmt, output, quiet, baseline=baseline, plot=plot)


@app.command()
@handle_errors
def recalibrate(
    model: Annotated[Path, typer.Argument(help="Model file: .onnx, .pt/.pth (+ --arch), .pt2, .ts, .safetensors (+ --arch).")],
    data: Annotated[str, typer.Argument(help="DATA to estimate the statistics on (as for drift: a folder, a file or an s3://... URL).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Where to write the recalibrated model (.pt/.pth: same kind as MODEL).")],
    method: Annotated[str, typer.Option("--method", help="exact (default): what inference sees; cumulative: = update_bn; ema: momentum updates.")] = "exact",
    variance: Annotated[str, typer.Option("--variance", help="exact: population (default) or unbiased running_var.")] = "population",
    momentum: Annotated[float | None, typer.Option("--momentum", help="ema: momentum (PyTorch convention; default: each layer's own).")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="exact: stop when what OUT's layers see is within this of the written statistics on every channel.")] = 1e-4,
    prior: PriorOpt = 0.0,
    precision: PrecisionOpt = None,
    holdout: HoldoutOpt = 0.1,
    force_write: ForceWriteOpt = False,
    device: DeviceOpt = None,
    layers: Annotated[str | None, typer.Option("--layers", help="Only recalibrate these BN layers (comma-separated names).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Output kind: onnx|export|torchscript|state-dict (default: from OUT's extension).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Full drift reports of MODEL and OUT on all of DATA (two more passes) for the before/after figures.")] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Batch size (default 32).")] = None,
    size: SizeOpt = None,
    crop: CropOpt = None,
    scale: ScaleOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    channel_order: ChannelOrderOpt = None,
    grayscale: GrayscaleOpt = None,
    layout: LayoutOpt = None,
    columns: ColumnsOpt = None,
    preprocess: PreprocessOpt = None,
    labels: LabelsOpt = None,
    limit: LimitOpt = None,
    strict: StrictOpt = False,
    nan: NanOpt = None,
    workers: WorkersOpt = None,
    arrays: ArraysOpt = None,
    arch: ArchOpt = None,
    trust_pickle: TrustPickleOpt = False,
    fmt: FormatOpt = None,
    output: Annotated[Path | None, typer.Option("--output", help="Write the report to FILE instead of stdout.")] = None,
    fail_on: FailOnOpt = None,
    select: SelectOpt = None,
    ignore: IgnoreOpt = None,
    threshold: ThresholdOpt = None,
    config: ConfigOpt = None,
    quiet: QuietOpt = False,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    storage_option: StorageOpt = None,
    baseline: BaselineOpt = None,
) -> None:
    """Re-estimate the running statistics of MODEL on DATA and write the result to OUT; the
    report compares drift (and accuracy, with labels) before and after."""
    from bncheck.cli.data_options import data_options
    from bncheck.commands.recalibrate import RecalibrateOptions
    from bncheck.commands.recalibrate import recalibrate as run_recalibrate
    from bncheck.config import load_settings

    settings = load_settings(config, fail_on=fail_on, select=select, ignore=ignore, thresholds=threshold)
    fmt = choose_format(fmt, report_path(output), settings.options.get("format"), command="recalibrate", baseline=baseline)
    guard_outputs(
        {"-o/--out": out, "--output": output},
        models=[model],
        inputs={"DATA": [data], "baseline": [baseline], "labels": [labels_file(labels)]},
        settings=settings,
    )
    output = report_path(output)
    data_opts = data_options(
        settings.options,
        size=size, crop=crop, scale=scale, mean=mean, std=std, channel_order=channel_order, grayscale=grayscale,
        layout=layout, columns=columns, preprocess=preprocess, labels=labels, limit=limit, strict=strict, nan=nan,
        workers=workers, arrays=arrays, batch_size=batch_size,
    )
    options = RecalibrateOptions(
        method=method,
        variance=variance,
        momentum=momentum,
        tolerance=tolerance,
        batch_size=data_opts.batch_size,
        limit=data_opts.limit,
        layers=[name.strip() for name in layers.split(",") if name.strip()] if layers else None,
        data_options=data_opts,
        verify=verify,
        prior=prior,
        precision=precision,
        holdout=holdout,
        force_write=force_write,
        device=device or "cpu",
    )
    from bncheck.cli.engines import engine_options
    from bncheck.data.remote import parse_storage_options

    options.engine = engine_options(engine, ray_address, workers, data_opts)
    options.storage_options = parse_storage_options(storage_option)
    report = run_recalibrate(model, data, out, settings=settings, options=options, to=to, force=force, arch=arch, trust_pickle=trust_pickle)
    emit(report, fmt, output, quiet, baseline=baseline)


register_report_commands(app)  # report, diff, schema (bncheck/cli/reports.py)
register_engine_commands(app)  # merge (bncheck/cli/engines.py)


def main() -> None:
    app()
