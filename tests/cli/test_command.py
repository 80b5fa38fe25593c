"""``@command(app)``: option bundles spread into typer options and rebuilt for the command,
help texts shown as written, errors as one sentence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from bncheck.cli.app import app as bncheck_app
from bncheck.cli.command import command
from bncheck.errors import UsageError

WIDE = {"COLUMNS": "200", "NO_COLOR": "1"}


@dataclass
class Pair:
    left: Annotated[int, typer.Option("--left", help="Left [tool.bncheck] value.")] = 1
    right: Annotated[str | None, typer.Option("--right", "-r", help="Right.")] = None


def _toy() -> tuple[typer.Typer, list]:
    app = typer.Typer()
    seen: list = []

    @command(app)
    def show(name: Annotated[str, typer.Argument(help="A name.")], *, pair: Pair) -> None:
        """Show NAME and the pair.

        A second paragraph."""
        seen.append((name, pair))
        if name == "bad":
            raise UsageError("bad is not a name; pick another one.")

    @command(app)
    def other() -> None:
        """Another command (so that typer keeps subcommands)."""

    return app, seen


def test_bundle_fields_become_options_and_come_back_as_one_instance():
    app, seen = _toy()
    result = CliRunner().invoke(app, ["show", "x", "--left", "7", "-r", "y"])
    assert result.exit_code == 0, result.output
    assert seen == [("x", Pair(left=7, right="y"))]
    result = CliRunner().invoke(app, ["show", "z"])
    assert seen[-1] == ("z", Pair())


@dataclass
class Outer:
    pair: Pair
    flag: Annotated[bool, typer.Option("--flag", help="A flag.")] = False


def test_a_bundle_of_bundles_is_spread_and_rebuilt_nested():
    app = typer.Typer()
    seen: list = []

    @command(app)
    def nested(*, outer: Outer) -> None:
        """Nested."""
        seen.append(outer)

    @command(app)
    def other() -> None:
        """Another."""

    result = CliRunner().invoke(app, ["nested", "--flag", "--left", "3"])
    assert result.exit_code == 0, result.output
    assert seen == [Outer(pair=Pair(left=3), flag=True)]
    text = CliRunner().invoke(app, ["nested", "--help"], env=WIDE).stdout
    assert text.index("--left") < text.index("--right") < text.index("--flag")


def test_errors_are_one_sentence_and_exit_2():
    app, _ = _toy()
    result = CliRunner().invoke(app, ["show", "bad"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: bad is not a name; pick another one."


def test_help_keeps_brackets_and_joins_paragraph_lines():
    app, _ = _toy()
    text = CliRunner().invoke(app, ["show", "--help"], env=WIDE).stdout
    assert "Left [tool.bncheck] value." in text
    assert "Show NAME and the pair." in text and "A second paragraph." in text


def test_a_name_declared_twice_is_refused_at_registration():
    app = typer.Typer()

    with pytest.raises(TypeError, match="declared twice: left"):

        @command(app)
        def clash(left: int = 0, *, pair: Pair) -> None:
            """Clash."""


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["audit", "--help"], "[tool.bncheck]"),
        (["drift", "--help"], "bncheck[report]"),
        (["drift", "--help"], "bncheck[ray]"),
        (["fold", "--help"], "write OUT, and verify that OUT"),
    ],
)
def test_the_real_help_texts_are_intact(argv, needle):
    result = CliRunner().invoke(bncheck_app, argv, env=WIDE)
    assert result.exit_code == 0
    assert needle in " ".join(result.stdout.split()), result.stdout
