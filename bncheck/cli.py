"""The ``bncheck`` command line: parse options, call the API, render the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bncheck._version import __version__
from bncheck.cli_common import (
    ArchOpt,
    ConfigOpt,
    FailOnOpt,
    FormatOpt,
    IgnoreOpt,
    OutputOpt,
    QuietOpt,
    SelectOpt,
    State,
    ThresholdOpt,
    TrustPickleOpt,
    choose_format,
    emit,
    handle_errors,
)

app = typer.Typer(
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


@app.command()
@handle_errors
def audit(
    model: Annotated[Path, typer.Argument(help="Model file: .onnx, .pt/.pth, .pt2, .ts, .safetensors.")],
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
) -> None:
    """Static checks of every batch-norm layer of MODEL (no data needed)."""
    from bncheck.audit import audit as run_audit
    from bncheck.config import load_settings

    settings = load_settings(
        config,
        fail_on=fail_on,
        select=select,
        ignore=ignore,
        thresholds=threshold,
        train_batch_size=train_batch_size,
    )
    fmt = choose_format(fmt, output, settings.options.get("format"))
    report = run_audit(model, settings=settings, arch=arch, trust_pickle=trust_pickle)
    emit(report, fmt, output, quiet)


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


def main() -> None:
    app()
