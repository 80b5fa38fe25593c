"""Option bundles: the options several commands share, declared once as dataclasses whose
fields are typer options. ``@command(app)`` (:mod:`bncheck.cli.command`) spreads them into
the command line and hands the command one instance of each. An option lives in its bundle's
field; :mod:`bncheck.cli.common` keeps an alias only for one that commands also take on
their own. The DATA bundle is :class:`bncheck.cli.data_options.DataArgs`, the engine bundle
:class:`bncheck.cli.engines.EngineArgs`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from bncheck.cli.common import (
    BaselineOpt,
    FormatOpt,
    OutputOpt,
    QuietOpt,
    choice,
    choose_format,
    emit,
    emit_many,
    err,
    output_file,
)
from bncheck.cli.guard import report_path
from bncheck.commands.progress import ALWAYS
from bncheck.config import Settings, load_settings
from bncheck.errors import UsageError
from bncheck.formats import FORMATS
from bncheck.report.report import Report
from bncheck.rules.finding import FAIL_ON


@dataclass
class ModelArgs:
    """How MODEL is opened: ``--arch`` for a state dict, ``--trust-pickle``."""

    arch: Annotated[
        str | None,
        typer.Option("--arch", help="Architecture for a state dict: package.module:factory or path/file.py:factory."),
    ] = None
    trust_pickle: Annotated[
        bool,
        typer.Option("--trust-pickle", help="Allow unpickling whole modules (runs code from the file: only for files you trust)."),
    ] = False

    def load_kwargs(self) -> dict[str, Any]:
        return {"arch": self.arch, "trust_pickle": self.trust_pickle}


@dataclass
class GateArgs:
    """What fails the run: ``--fail-on``, ``--select``, ``--ignore``, ``--threshold``, ``--config``."""

    fail_on: Annotated[
        choice(FAIL_ON) | None,
        typer.Option("--fail-on", case_sensitive=False, help="Lowest severity that fails the run (exit 1). Default: error."),
    ] = None
    select: Annotated[list[str] | None, typer.Option("--select", help="Only these rules (codes or prefixes, comma-separated).")] = None
    ignore: Annotated[list[str] | None, typer.Option("--ignore", help="Skip these rules (codes or prefixes, comma-separated).")] = None
    threshold: Annotated[
        list[str] | None, typer.Option("--threshold", "-t", help="Override a rule threshold: CODE.NAME=VALUE (repeatable).")
    ] = None
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Config file (default: [tool.bncheck] in the nearest pyproject.toml, then bncheck.toml)."),
    ] = None

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


ModelOutputOpt = Annotated[
    Path | None,
    output_file(
        "--output", "-o",
        help="Write the report to FILE instead of stdout; a FILE with a model file's extension (.onnx, .pt, .pth, .pt2, "
        ".ts, .safetensors) is the model to write instead, as --out (bncheck fold MODEL -o OUT.onnx).",
    ),
]


@dataclass
class ModelReportArgs(ReportArgs):
    """The report bundle of fold and recalibrate, whose ``-o OUT.onnx`` names the written model
    (the contract's form); only ``--help`` says it differently."""

    output: ModelOutputOpt = None
