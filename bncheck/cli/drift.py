"""``bncheck drift``: run DATA through MODEL and compare what every BN layer sees with its stored statistics (:mod:`bncheck.commands.drift`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from bncheck.cli.bundles import ReportArgs
from bncheck.cli.command import command
from bncheck.cli.common import PlotOpt, emit_ranking, output_file, parse_class_axis
from bncheck.cli.engines import ShardOpt, StatsOpt
from bncheck.cli.guard import guard_outputs
from bncheck.cli.model_options import LayersOpt, layer_names
from bncheck.cli.run_args import RunArgs
from bncheck.commands.drift import DriftOptions
from bncheck.commands.drift import drift as run_drift
from bncheck.data.shards import parse_shard
from bncheck.errors import UsageError

app = typer.Typer()


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
    train_pass: Annotated[
        str,
        typer.Option(
            "--train-pass",
            metavar="auto|always",
            help="BN201's train-mode pass: auto (default) skips it where the batch scatter estimated from the main pass is too small for BN201 to fire; always runs it (the report then has the output figures).",
        ),
    ] = "auto",
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
    save_stats: Annotated[Path | None, output_file("--save-stats", help="Write the per-channel statistics to FILE.npz or FILE.parquet.")] = None,
    plot: PlotOpt = None,
    channels: Annotated[
        bool, typer.Option("--channels", help="Keep the per-channel statistics in the report (always with --format html).")
    ] = False,
    shard: ShardOpt = None,
    stats: StatsOpt = None,
    *,
    run: RunArgs,
) -> None:
    """Run DATA through MODEL and compare what every BN layer sees with its stored statistics.
    With several MODELs (bncheck drift M1 M2 ... DATA), rank them by how well their stored
    statistics fit DATA, best first; each model's own findings still gate the run."""
    models, data = _models_and_data(paths)
    settings = run.gate.settings(train_batch_size=train_batch_size, options={"mismatch_samples": mismatch_samples, "class_axis": class_axis})
    fmt = run.report.format(settings, "drift", plot=plot)
    if len(models) > 1:
        check_ranking(fmt, run.report, plot)
    guard_outputs(
        {"--output": run.report.output, "--save-stats": save_stats, "--plot": plot},
        models=models,
        inputs={"DATA": [data], "statistics": [stats], "baseline": [run.report.baseline], "labels": [run.data.labels_path]},
        settings=settings,
    )
    options = DriftOptions(
        **run.pass_options(settings),
        train_batch_size=settings.train_batch_size or 16,
        mismatch_samples=settings.option("mismatch_samples"),
        diagnosis_samples=diagnosis_samples,
        train_pass=train_pass,
        save_stats=save_stats,
        layers=layer_names(layers),
        channels=channels or fmt == "html",
        shard=parse_shard(shard),
        stats=stats,
        class_axis=parse_class_axis(settings.option("class_axis")),
    )
    if len(models) > 1:
        emit_ranking(_ranking("bncheck.commands.drift_ranking").rank_models(models, data, settings=settings, options=options, **run.model.load_kwargs()), fmt, run.report.path, run.report.quiet)
    result = run_drift(models[0], data, settings=settings, options=options, **run.model.load_kwargs())
    run.report.emit(result, fmt, plot=plot)


def check_ranking(fmt: str, report: ReportArgs, plot: Path | None) -> None:
    """Refuse, before any work, what a ranking of several models cannot show."""
    _ranking("bncheck.formats.ranking").check_format(fmt)
    if report.baseline is not None:
        raise UsageError("--baseline judges one model; give one MODEL with it.")
    if plot is not None:
        raise UsageError("--plot draws the chart of one model; give one MODEL with it.")


def _ranking(module: str):
    """A module of the ranking of several models, imported only by ``drift M1 M2 ... DATA`` (one
    model's drift need not load it)."""
    return importlib.import_module(module)
