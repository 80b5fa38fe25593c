"""Option bundles: the options several commands share, declared once as dataclasses whose
fields are typer options. ``@command(app)`` (:mod:`bncheck.cli.command`) spreads them into
the command line and hands the command one instance of each."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bncheck.cli.common import (
    ArchOpt,
    BaselineOpt,
    ConfigOpt,
    FailOnOpt,
    FormatOpt,
    IgnoreOpt,
    OutputOpt,
    QuietOpt,
    SelectOpt,
    ThresholdOpt,
    TrustPickleOpt,
    choose_format,
    emit,
    emit_many,
    err,
)
from bncheck.cli.data_options import (
    ArraysOpt,
    BatchSizeOpt,
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
from bncheck.cli.engines import EngineOpt, RayAddressOpt, StorageOpt
from bncheck.cli.guard import labels_file, report_path
from bncheck.cli.recalibrate_options import DeviceOpt
from bncheck.commands.progress import ALWAYS
from bncheck.config import Settings, load_settings
from bncheck.data import DataOptions, build_options
from bncheck.data.remote import parse_storage_options
from bncheck.engines import Engine, make_engine
from bncheck.errors import UsageError
from bncheck.formats import FORMATS
from bncheck.report.report import Report


@dataclass
class ModelArgs:
    """How MODEL is opened: ``--arch`` for a state dict, ``--trust-pickle``."""

    arch: ArchOpt = None
    trust_pickle: TrustPickleOpt = False

    def load_kwargs(self) -> dict[str, Any]:
        return {"arch": self.arch, "trust_pickle": self.trust_pickle}


@dataclass
class GateArgs:
    """What fails the run: ``--fail-on``, ``--select``, ``--ignore``, ``--threshold``, ``--config``."""

    fail_on: FailOnOpt = None
    select: SelectOpt = None
    ignore: IgnoreOpt = None
    threshold: ThresholdOpt = None
    config: ConfigOpt = None

    def settings(self, **extra: Any) -> Settings:
        """The config file's settings, overridden by the ``BNCHECK_*`` variables, overridden by
        these options (and ``extra``); a warning on stderr for an unknown ``BNCHECK_`` variable."""
        settings = load_settings(
            self.config, fail_on=self.fail_on, select=self.select, ignore=self.ignore, thresholds=self.threshold, **extra
        )
        for warning in settings.warnings:
            err(warning)
        return settings


@dataclass
class ReportArgs:
    """Where and how the report goes: ``--format``, ``-o/--output``, ``--quiet``, ``--baseline``."""

    fmt: FormatOpt = None
    output: OutputOpt = None
    quiet: QuietOpt = False
    baseline: BaselineOpt = None

    @property
    def path(self) -> Path | None:
        """The report file (None: stdout, also for ``-o -``)."""
        return report_path(self.output)

    def progress(self, settings: Settings) -> bool | str:
        """Whether progress is drawn on stderr: never with --quiet or ``progress = "never"``;
        ``"always"`` (drawn even when stderr is no terminal) with ``progress = "always"``;
        else when stderr is a terminal."""
        mode = settings.option("progress")
        if self.quiet or mode == "never":
            return False
        return ALWAYS if mode == ALWAYS else sys.stderr.isatty()

    def format(self, settings: Settings | None, command: str, plot: Path | None = None) -> str:
        """The format (option, config, the output's extension, else table), checked before any work."""
        configured = settings.options.get("format") if settings is not None else None
        if self.fmt is None and configured is not None and configured not in FORMATS:
            raise UsageError(f"{settings.source('format')}: format {configured!r} is not a report format; choose one of: {', '.join(FORMATS)}.")
        return choose_format(self.fmt, self.path, configured, command=command, baseline=self.baseline, plot=plot)

    def emit(self, report: Report, fmt: str, *, plot: Path | None = None, options: dict | None = None) -> None:
        """Render and write ``report``; exits with its code."""
        emit(report, fmt, self.path, self.quiet, baseline=self.baseline, plot=plot, options=options)

    def emit_many(self, reports: list[Report], fmt: str) -> None:
        """Render and write several reports as one document; exits 1 when any fails."""
        if self.baseline is not None:
            raise UsageError("--baseline judges one model; give one MODEL with it.")
        emit_many(reports, fmt, self.path, self.quiet)


@dataclass
class DataArgs:
    """How DATA is read (drift, recalibrate): sizes, normalisation, layout, labels, limits."""

    batch_size: BatchSizeOpt = None
    size: SizeOpt = None
    crop: CropOpt = None
    scale: ScaleOpt = None
    mean: MeanOpt = None
    std: StdOpt = None
    channel_order: ChannelOrderOpt = None
    grayscale: GrayscaleOpt = None
    layout: LayoutOpt = None
    columns: ColumnsOpt = None
    preprocess: PreprocessOpt = None
    labels: LabelsOpt = None
    limit: LimitOpt = None
    strict: StrictOpt = False
    nan: NanOpt = None
    workers: WorkersOpt = None
    arrays: ArraysOpt = None

    @property
    def labels_path(self) -> str | None:
        """The file ``--labels`` names (not the words ``folders``/``none``)."""
        return labels_file(self.labels)

    def options(self, config: dict[str, Any]) -> DataOptions:
        """DataOptions from the config table overlaid with the options given here."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if values["strict"] is False:
            values["strict"] = None  # "not given": keep the config's value
        return build_options(config, values)


@dataclass
class EngineArgs:
    """Where the passes run: ``--engine``, ``--ray-address``, ``--storage-option``, ``--device``."""

    engine: EngineOpt = None
    ray_address: RayAddressOpt = None
    storage_option: StorageOpt = None
    device: DeviceOpt = None

    def build(self, workers: int | None, data_opts: DataOptions) -> Engine:
        """The engine chosen. With ray, ``--workers`` counts actors and each actor decodes with
        one background thread (``data_opts.workers`` is set to 1)."""
        choice = (self.engine or "local").strip().lower()
        if choice == "ray":
            data_opts.workers = 1
            return make_engine("ray", workers=workers, address=self.ray_address)
        return make_engine(choice, address=self.ray_address)

    def storage_options(self) -> dict[str, Any]:
        return parse_storage_options(self.storage_option)
