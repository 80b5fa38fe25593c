"""``bncheck drift``: run DATA through MODEL and compare what every BN layer sees with its stored statistics (:mod:`bncheck.commands.drift`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bncheck.cli.bundles import GateArgs, ModelArgs, ReportArgs
from bncheck.cli.command import command
from bncheck.cli.common import PlotOpt, parse_class_axis
from bncheck.cli.data_options import DataArgs
from bncheck.cli.engines import EngineArgs, ShardOpt, StatsOpt
from bncheck.cli.guard import guard_outputs
from bncheck.cli.model_options import LayersOpt, ModelArg, layer_names
from bncheck.commands.drift import DriftOptions
from bncheck.commands.drift import drift as run_drift
from bncheck.data.shards import parse_shard

app = typer.Typer()


@command(app)
def drift(
    model: ModelArg,
    data: Annotated[
        str | None,
        typer.Argument(help="DATA: a file or folder (or an s3://, gs://... URL) of images, .npy/.npz/.pt arrays or .csv/.parquet rows; not with --stats."),
    ] = None,
    train_batch_size: Annotated[
        int | None, typer.Option("--train-batch-size", help="Per-device training batch size for the small-batch analysis (default 16).")
    ] = None,
    mismatch_samples: Annotated[
        int | None, typer.Option("--mismatch-samples", help="Samples for the train-mode analyses BN201/BN301 (default 256; 0 skips them).")
    ] = None,
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
    """Run DATA through MODEL and compare what every BN layer sees with its stored statistics."""
    settings = gate.settings(train_batch_size=train_batch_size, options={"mismatch_samples": mismatch_samples, "class_axis": class_axis})
    fmt = report.format(settings, "drift", plot=plot)
    guard_outputs(
        {"--output": report.output, "--save-stats": save_stats, "--plot": plot},
        models=[model],
        inputs={"DATA": [data], "statistics": [stats], "baseline": [report.baseline], "labels": [data_args.labels_path]},
        settings=settings,
    )
    data_opts = data_args.options(settings.options)
    options = DriftOptions(
        batch_size=data_opts.batch_size,
        limit=data_opts.limit,
        train_batch_size=settings.train_batch_size or 16,
        mismatch_samples=settings.option("mismatch_samples"),
        save_stats=save_stats,
        layers=layer_names(layers),
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
    result = run_drift(model, data, settings=settings, options=options, **model_args.load_kwargs())
    report.emit(result, fmt, plot=plot)
