"""What every command's CLI shares: common options, error handling, writing the report.

The CLI only parses and renders; the work happens in the Python API.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import platform
import shlex
import shutil
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from typer.models import TyperPath

from bncheck.backends.output import names_a_directory, slash_problem, write_atomically
from bncheck.backends.output_guard import interrupt_on_sigterm
from bncheck.cli.group import State, err
from bncheck.errors import BncheckError, OutputError, first_line
from bncheck.formats import EXTENSIONS, FITS_EXTENSION, FORMATS, get_renderer, render_many
from bncheck.formats.common import headline, package_versions
from bncheck.report.baseline import apply_baseline, check_baseline_file
from bncheck.report.report import Report

if TYPE_CHECKING:
    from bncheck.report.ranking import Ranking


def report_width() -> int:
    """The width tables are drawn at: the terminal's when stdout is one, else ``$COLUMNS``,
    else 120 (logs and files: wide enough for a row, narrow enough to read)."""
    return max(shutil.get_terminal_size(fallback=(120, 24)).columns, 40)


def choice(values: Iterable[str]) -> Any:
    """An enumerated option's type (``Literal[...]``): typer lists its values in help, offers
    them to shell completion and, with ``case_sensitive=False``, reads ``-f JSON`` as ``json``."""
    return Literal[tuple(values)]


class OutputFile(TyperPath):
    """The type of an option that names a file to write. pathlib drops a trailing slash
    (``Path("out/x.onnx/")`` is ``out/x.onnx``), so it is checked on the typed string: a
    trailing slash names a directory, and writing the file beside it would not be what was asked."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if names_a_directory(value):
            self.fail(slash_problem(value), param, ctx)
        return super().convert(value, param, ctx)


def output_file(*names: str, **kwargs: Any) -> Any:
    """``typer.Option(*names, **kwargs)`` for a file to write (:class:`OutputFile`)."""
    return typer.Option(*names, click_type=OutputFile(), **kwargs)


FormatOpt = Annotated[
    choice(FORMATS) | None,
    typer.Option("--format", "-f", case_sensitive=False, help="Report format (default: table, or from --output's extension)."),
]
OutputOpt = Annotated[
    Path | None, output_file("--output", "-o", help="Write the report to FILE instead of stdout.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr; a one-line table.")]
BaselineOpt = Annotated[
    Path | None,
    typer.Option(
        "--baseline",
        help="A previous JSON report (or drift --save-stats file): only findings that are new or worse than in it fail the gate.",
    ),
]
PlotOpt = Annotated[
    Path | None, output_file("--plot", help="Also write the per-layer drift chart to FILE.png or FILE.svg (needs bncheck[report]).")
]


def one_line(message: str) -> str:
    """A refusal is one line on stderr, even when it quotes a library's multi-line message."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


@contextlib.contextmanager
def quiet_data_notes(quiet: bool):
    """Under ``--quiet``, the data loader's logged notes (NaN/Inf samples excluded) stay off
    stderr for the command (restored after it: one process may run several, as the tests do);
    the ``--device auto`` fallback warning stays."""
    if not quiet:
        yield
        return
    import logging

    logger = logging.getLogger("bncheck.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def handle_errors(func):
    """Turn BncheckError into one line on stderr and exit 2; unexpected errors too (with the
    traceback only under --debug)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        interrupt_on_sigterm()  # temporary files are removed on SIGTERM as on Ctrl-C
        try:
            with quiet_data_notes(bool(kwargs.get("quiet"))):
                return func(*args, **kwargs)
        except typer.Exit:
            raise
        except BncheckError as exc:
            if State.debug:
                traceback.print_exc()
            err(f"error: {one_line(str(exc))}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err("error: interrupted.")
            raise typer.Exit(2) from None
        except Exception as exc:  # a bug, or an input we failed to anticipate
            if State.debug:
                traceback.print_exc()
            detail = first_line(exc) if str(exc).strip() else ""
            err(
                f"error: unexpected {type(exc).__name__}{': ' + detail if detail else ''}; "
                "re-run with --debug for the traceback and please report it."
            )
            raise typer.Exit(2) from None

    return wrapper


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def stdout_color(output: Path | None) -> bool:
    """Whether a report is coloured: only when it goes to a terminal and NO_COLOR is not set."""
    return output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ


def write_text(text: str, output: Path | None, quiet: bool, what: str) -> None:
    """``text`` to ``output`` (atomically; "WHAT written to OUTPUT" on stderr unless ``quiet``)
    or, without ``output``, to stdout."""
    if output is not None:
        atomic_write_text(output, text)
        if not quiet:
            err(f"{what} written to {output}")
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def choose_format(
    fmt: str | None,
    output: Path | None,
    settings_format: str | None = None,
    *,
    command: str | None = None,
    baseline: Path | None = None,
    plot: Path | None = None,
) -> str:
    """The report format (option, config, OUTPUT's extension, else table). Also checks, before
    any work is done, what the outputs will need: matplotlib for ``--plot``, a usable
    ``--baseline`` for ``command``."""
    fmt = fmt or settings_format
    if fmt is None and output is not None:
        fmt = EXTENSIONS.get(output.suffix.lower())
    fmt = fmt or "table"
    if fmt not in FORMATS:
        raise OutputError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
    fits = FITS_EXTENSION.get(output.suffix.lower()) if output is not None else None
    if fits is not None and fmt not in fits:  # -o report.json -f markdown wrote Markdown into a .json file
        raise OutputError(
            f"--output {output} is a {output.suffix.lower()} file but the format is {fmt}; name the file for its format "
            f"or give --format {'/'.join(sorted(fits))}."
        )
    if plot is not None:
        _plot().plot_format(plot)
        if output is not None and plot.resolve() == output.resolve():
            raise OutputError(f"--plot and --output both name {plot}; give the chart its own file.")
    if plot is not None:  # --plot draws with matplotlib; --format html needs nothing extra
        _plot().require_matplotlib()
    if baseline is not None and command is not None:
        check_baseline_file(baseline, command)
    return fmt


def _plot():
    """:mod:`bncheck.formats.plot`, imported only by a run with ``--plot`` (like the ranking
    view for ``drift M1 M2 ... DATA``): a plain run does not pay for loading them."""
    return importlib.import_module("bncheck.formats.plot")


def run_info() -> dict:
    """How this report was made: the command line, the working folder, the versions."""
    argv = list(State.argv) if State.argv is not None else list(sys.argv[1:])
    return {
        "command_line": shlex.join(["bncheck", *argv]),
        "argv": argv,
        "cwd": os.getcwd(),
        "versions": package_versions(),
        "platform": platform.platform(),
    }


#: findings said on stderr whatever the format and wherever the report goes: a run that checked
#: nothing must not pass silently (issue 15)
STDERR_RULES = ("BN000",)


def say_on_stderr(report: Report, quiet: bool) -> None:
    """The :data:`STDERR_RULES` findings of ``report`` as lines on stderr (not under --quiet)."""
    if quiet:
        return
    for finding in report.findings:
        if finding.rule in STDERR_RULES:
            err(f"{finding.severity.value}: {report.model.path}: {finding.message} [{finding.rule}; --fail-on {finding.severity.value} makes it fail]")


def emit(
    report: Report,
    fmt: str,
    output: Path | None,
    quiet: bool = False,
    *,
    baseline: Path | None = None,
    plot: Path | None = None,
    options: dict | None = None,
) -> None:
    """Render ``report`` and write it to ``output`` or stdout (and the drift chart to
    ``plot``); with ``baseline``, only new and worse findings fail the gate; ``options`` go to
    the renderer (html's ``layer``). Exits with the report's code."""
    if baseline is not None:
        apply_baseline(report, baseline)
    say_on_stderr(report, quiet)
    if report.run is None:
        report.run = run_info()
    renderer = get_renderer(fmt)
    color = stdout_color(output)
    if fmt == "table" and quiet:
        text = headline(report) + "\n"
    else:
        text = renderer(report, color=color, **({"width": report_width()} if fmt == "table" else {}), **(options or {}))
    chart = None
    if plot is not None:
        chart = _plot().plot_bytes(report, plot)
    if output is not None:
        atomic_write_text(output, text)
        if not quiet:
            err(f"report written to {output}")
    if chart is not None:
        write_atomically(plot, lambda tmp: Path(tmp).write_bytes(chart))
        if not quiet:
            err(f"drift chart written to {plot}")
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    raise typer.Exit(report.exit_code)


def parse_class_axis(value: str) -> int | str:
    """``--class-axis``: "auto", "none" or an integer axis (exit 2 with a clear message otherwise)."""
    text = str(value).strip().lower()
    if text in ("auto", "none"):
        return text
    try:
        return int(text)
    except ValueError:
        raise BncheckError(f"--class-axis must be auto, none or an axis index of the model's output (like -1 or 2), not {value!r}.") from None


def emit_many(reports: list[Report], fmt: str, output: Path | None, quiet: bool = False) -> None:
    """Several reports (``audit A B ...``) as one document (:func:`bncheck.formats.render_many`),
    written like :func:`emit`; exits 1 when any report fails its gate."""
    info = run_info()
    for report in reports:
        report.run = report.run or info
        say_on_stderr(report, quiet)
    if fmt == "table" and quiet:
        text = "".join(headline(report) + "\n" for report in reports)
    else:
        text = render_many(reports, fmt, color=stdout_color(output))
    write_text(text, output, quiet, f"report of {len(reports)} models")
    raise typer.Exit(max(report.exit_code for report in reports))


def emit_ranking(ranking: Ranking, fmt: str, output: Path | None, quiet: bool = False) -> None:
    """Several models ranked on one DATA (``drift M1 M2 ... DATA``), written like :func:`emit`;
    exits 1 when any model's report fails its own gate (the order never fails a run)."""
    info = run_info()
    for report in ranking.reports:
        report.run = report.run or info
        say_on_stderr(report, quiet)
    width = report_width() if fmt == "table" else None
    text = importlib.import_module("bncheck.formats.ranking").render(ranking, fmt, color=stdout_color(output), width=width, quiet=quiet)
    write_text(text, output, quiet, f"ranking of {len(ranking.reports)} models")
    raise typer.Exit(ranking.exit_code)
