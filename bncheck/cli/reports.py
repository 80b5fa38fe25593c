"""The commands that work on saved reports, without running a model: ``bncheck report``
(render a JSON report again, in any format, optionally against a baseline), ``bncheck diff``
(what changed between two runs) and ``bncheck schema`` (the JSON Schema of the report).
The app's registry (:mod:`bncheck.cli.app`) loads this module for any of them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bncheck.cli.command import command
from bncheck.cli.common import (
    BaselineOpt,
    FormatOpt,
    OutputOpt,
    PlotOpt,
    QuietOpt,
    atomic_write_text,
    choice,
    choose_format,
    emit,
    report_width,
    stdout_color,
    write_text,
)
from bncheck.cli.guard import guard_outputs, report_path
from bncheck.errors import UsageError
from bncheck.formats.diff_view import headline
from bncheck.report.diff import diff as run_diff
from bncheck.report.io import load_report
from bncheck.report.schema import schema_text
from bncheck.rules.finding import FAIL_ON

RunArg = Annotated[Path, typer.Argument(help="A JSON report written by --format json.", metavar="RUN.json")]
FailOnOverride = Annotated[
    choice(FAIL_ON) | None,
    typer.Option("--fail-on", case_sensitive=False, help="Gate severity (default: the one the report was made with)."),
]


def _check_fail_on(value: str | None) -> None:
    if value is not None and value not in FAIL_ON:
        raise UsageError(f"--fail-on {value!r} must be one of: error, warning, info, never.")


def report(
    run: RunArg,
    fmt: FormatOpt = None,
    output: OutputOpt = None,
    fail_on: FailOnOverride = None,
    baseline: BaselineOpt = None,
    plot: PlotOpt = None,
    layer: Annotated[
        str | None, typer.Option("--layer", help="html: the layer opened on load, with its per-channel charts (default: the most drifting).")
    ] = None,
    exit_zero: Annotated[
        bool,
        typer.Option("--exit-zero", help="Exit 0 even when the gate fails (2 still means an error): for steps that only render."),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Render a saved JSON report in any format without running the model again.

    Exits 0/1 by the report's gate, re-judged with --fail-on or --baseline when given."""
    _check_fail_on(fail_on)
    saved = load_report(run)
    if fail_on is not None:
        saved.fail_on = fail_on
    fmt = choose_format(fmt, report_path(output), command=saved.command, baseline=baseline, plot=plot)
    guard_outputs({"--output": output, "--plot": plot}, inputs={"report": [run], "baseline": [baseline]})
    output = report_path(output)
    if layer is not None and fmt != "html":
        raise UsageError("--layer picks the layer of the html report's scatter plots; use it with --format html.")
    try:
        emit(saved, fmt, output, quiet, baseline=baseline, plot=plot, options={"layer": layer} if layer else None)
    except typer.Exit as done:
        if exit_zero and done.exit_code == 1:
            raise typer.Exit(0) from None
        raise


def diff(
    a: Annotated[Path, typer.Argument(help="The earlier run's JSON report (e.g. the last release).", metavar="A.json")],
    b: Annotated[Path, typer.Argument(help="The later run's JSON report (e.g. the candidate).", metavar="B.json")],
    fmt: Annotated[choice(("table", "json", "markdown")) | None, typer.Option("--format", "-f", case_sensitive=False, help="Output format (default: table, or from --output's extension).")] = None,
    output: OutputOpt = None,
    fail_on: Annotated[
        choice(FAIL_ON) | None,
        typer.Option("--fail-on", case_sensitive=False, help="Exit 1 when B has a new or worse finding at this severity or above (default: B's)."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Show what changed between two JSON reports of the same command (e.g. release vs candidate).

    Findings are new, worse, better, unchanged or resolved; drift figures are compared per
    layer. Exits 1 when B has new or worse findings that reach --fail-on."""
    _check_fail_on(fail_on)
    guard_outputs({"--output": output}, inputs={"report": [a, b]})
    output = report_path(output)
    if fmt is None and output is not None:
        fmt = {".json": "json", ".md": "markdown"}.get(output.suffix.lower())
    fmt = fmt or "table"
    if fmt not in ("table", "json", "markdown"):
        raise UsageError(f"bncheck diff writes table, json or markdown, not {fmt!r}.")
    result = run_diff(a, b, fail_on=fail_on)
    if fmt == "table" and quiet:
        text = headline(result) + "\n"
    else:
        text = result.render(fmt, color=stdout_color(output), width=report_width())
    write_text(text, output, quiet, "diff")
    raise typer.Exit(result.exit_code)


def schema(
    output: OutputOpt = None,
) -> None:
    """Print the JSON Schema (draft 2020-12) of the JSON report."""
    text = schema_text()
    output = report_path(output)
    if output is not None:
        atomic_write_text(output, text)
    else:
        sys.stdout.write(text)


#: ``bncheck report``, ``diff`` and ``schema``
app = typer.Typer()
for _func in (report, diff, schema):
    command(app)(_func)
