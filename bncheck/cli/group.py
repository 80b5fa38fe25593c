"""The app's command group: it records the raw arguments, reads ``--debug``/``--verbose``
anywhere on the line, turns a bad command line into one sentence, and loads each command's
module only when that command runs (:class:`LazyGroup`).

Nothing here imports numpy, a model runtime or another command: ``bncheck --help`` and
``bncheck drift ...`` pay only for what they use (issues 13 and 14: a fixed cost of every
process)."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError


class State:
    debug = False
    verbose = False
    #: the arguments of this invocation (after ``bncheck``), recorded by RecordingGroup
    argv: list[str] | None = None


#: options of the whole program that may stand anywhere on the line (``bncheck audit m.onnx --debug``)
GLOBAL_FLAGS = ("--debug", "--verbose")


def literal(text: str | None) -> str | None:
    """``text`` with rich markup escaped: help texts are shown as written. Called only when
    help is shown (:func:`literal_help`): rich.markup costs 10 ms of a process."""
    if text is None:
        return None
    from rich.markup import escape

    return escape(text)


def literal_help(command) -> None:
    """Escape a command's (or group's) help text and its options' for rich markup, once,
    before its help is formatted: texts are declared as written and shown as written."""
    if getattr(command, "_literal_help", False):
        return
    command.help = literal(command.help)
    for param in command.params:
        if getattr(param, "help", None):
            param.help = literal(param.help)
    command._literal_help = True


def literal_doc(doc: str | None) -> str | None:
    """A docstring as command help: literal, each paragraph's lines joined (the terminal wraps)."""
    if not doc:
        return None
    return "\n\n".join(" ".join(line.strip() for line in para.splitlines()) for para in doc.split("\n\n"))


def err(message: str) -> None:
    typer.echo(message, err=True)


def hoist_global_flags(args: list[str]) -> list[str]:
    """``args`` with ``--debug``/``--verbose`` moved before the command, where the app reads
    them; nothing after a ``--`` is touched."""
    cut = args.index("--") if "--" in args else len(args)
    head, tail = args[:cut], args[cut:]
    flags = [flag for flag in GLOBAL_FLAGS if flag in head]
    return [*flags, *(arg for arg in head if arg not in GLOBAL_FLAGS), *tail]


def usage_sentence(exc: ClickException) -> str:
    """click's message for a bad command line as one sentence pointing at ``--help``."""
    message = exc.format_message().replace("Value error, ", "").strip().rstrip(".")
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path} --help" if ctx is not None else "bncheck --help"
    return f"{message}; see '{where}'."


class RecordingGroup(typer.core.TyperGroup):
    """A command group that records the raw arguments, so that reports can state the exact
    command that made them (``run.command_line``), and reads ``--debug``/``--verbose``
    wherever they stand."""

    def parse_args(self, ctx, args):
        State.argv = list(args)
        return super().parse_args(ctx, hoist_global_flags(list(args)))

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            hide_flag_types(command, ctx)
        return name, command, rest

    def format_help(self, ctx, formatter):
        hide_flag_types(self, ctx)
        literal_help(self)
        return super().format_help(ctx, formatter)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """As typer's, but a bad option or argument is one sentence on stderr (exit 2), like
        every other refusal, instead of a usage box."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except NoArgsIsHelpError:
            return super().main(args, prog_name, complete_var, True, **extra)
        except ClickException as exc:
            err(f"error: {usage_sentence(exc)}")
            sys.exit(2)
        sys.exit(code or 0)


def hide_flag_types(command, ctx) -> None:
    """Flags take no value: their help rows show none (typer prints ``<bool>``, which reads as if
    ``--trust-pickle`` wanted ``true``/``false`` after it)."""
    for param in [*command.params, command.get_help_option(ctx)]:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


@dataclass(frozen=True)
class LazyCommand:
    """Where a command is declared: ``module`` (a :mod:`bncheck.cli` module whose ``app``, a
    ``typer.Typer``, holds the command), and its one-line summary for ``bncheck --help``
    (the first paragraph of the command's docstring, its lines joined: tests/cli/test_startup.py
    keeps the two equal)."""

    module: str
    summary: str
    #: environment defaults set (where the user has set none) before the module is imported,
    #: hence before numpy and torch read them (see :data:`bncheck.cli.app.QUIET_THREADS`)
    env: Mapping[str, str] = field(default_factory=dict)


class LazyGroup(RecordingGroup):
    """A :class:`RecordingGroup` whose commands are named in :attr:`lazy_commands` and imported
    when one is resolved: ``bncheck drift`` imports bncheck.cli.drift (and what it needs), not
    fold's, recalibrate's or audit's modules. The group's own help lists the summaries
    without importing any command."""

    #: name -> where the command is declared (set by the app, in the order of ``--help``)
    lazy_commands: Mapping[str, LazyCommand] = {}
    _listing = False

    def list_commands(self, ctx) -> list[str]:
        return [*super().list_commands(ctx), *(name for name in self.lazy_commands if name not in self.commands)]

    def get_command(self, ctx, cmd_name: str):
        if cmd_name in self.commands or cmd_name not in self.lazy_commands:
            return super().get_command(ctx, cmd_name)
        entry = self.lazy_commands[cmd_name]
        if self._listing:  # the group's help: the name and the summary are all it shows
            return typer.core.TyperCommand(name=cmd_name, help=literal(entry.summary))
        for name, value in entry.env.items():
            os.environ.setdefault(name, value)
        declared = typer.main.get_group(importlib.import_module(entry.module).app)
        command = declared.commands.get(cmd_name)
        if command is None:
            raise LookupError(f"{entry.module}.app declares no command {cmd_name!r}")
        self.commands[cmd_name] = command  # resolved once per process
        return command

    def format_help(self, ctx, formatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False
