"""``bncheck rules``: list the rules, or explain one (:mod:`bncheck.rules.docs`)."""

from __future__ import annotations

from typing import Annotated

import typer

from bncheck.cli.command import command
from bncheck.cli.common import choice, report_width
from bncheck.rules.docs import render_rule_list
from bncheck.rules.registry import get_rule

app = typer.Typer()


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
