"""The ``bncheck`` command line: parse options, call the API, render the report.

Each command is declared in its own module of :mod:`bncheck.cli` (``bncheck.cli.drift``,
``bncheck.cli.fold``...) with ``@command(app)`` on that module's ``app``; :data:`COMMANDS`
names the module of every command, and the group imports only the one a command line runs
(``bncheck --help`` imports none). Adding a command: declare it in a module and list it here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from bncheck._version import __version__
from bncheck.cli.group import LazyCommand, LazyGroup, State
from bncheck.cli.quiet import quiet_libraries

#: ``bncheck fold``'s threads, where the user has not chosen: OpenBLAS (numpy: the float64 site
#: proofs, the fold arithmetic) on the calling thread, and torch's OpenMP threads sleeping, not
#: spinning, while they wait. A fold runs a few small passes: on a machine whose cores are busy
#: with other processes (CI runners, shared machines) a spinning thread waits for one that is not
#: running, and a PyTorch fold took about 4x as long, in CPU time as in wall time; an ONNX fold
#: ~15% more CPU (bench/results/fold_peers.md). onnxruntime's verification sessions do not spin
#: either (bncheck.backends.onnx.session). Set before numpy and torch load: they read them once.
QUIET_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}

#: every command, in the order of ``bncheck --help``: the module that declares it and the first
#: paragraph of its docstring (tests/cli/test_startup.py checks both against the modules)
COMMANDS = {
    "audit": LazyCommand(
        "bncheck.cli.audit", "Static checks of every batch-norm layer of MODEL (no data needed); several MODELs give one report each."
    ),
    "fold": LazyCommand("bncheck.cli.fold", "Fold BN layers of MODEL into the conv/linear weights that feed them, write OUT, and verify that OUT computes the same function (exit 1 when it does not).",
                        env=QUIET_THREADS),
    "rules": LazyCommand("bncheck.cli.rules", "List the rules, or explain one (bncheck rules BN003)."),
    "drift": LazyCommand(
        "bncheck.cli.drift",
        "Run DATA through MODEL and compare what every BN layer sees with its stored statistics. With several MODELs (bncheck drift M1 M2 ... DATA), rank them by how well their stored statistics fit DATA, best first; each model's own findings still gate the run.",
    ),
    "recalibrate": LazyCommand(
        "bncheck.cli.recalibrate",
        "Re-estimate the running statistics of MODEL on DATA and write the result to OUT; the report compares drift (and accuracy, with labels) before and after.",
    ),
    "report": LazyCommand("bncheck.cli.reports", "Render a saved JSON report in any format without running the model again."),
    "diff": LazyCommand("bncheck.cli.reports", "Show what changed between two JSON reports of the same command (e.g. release vs candidate)."),
    "schema": LazyCommand("bncheck.cli.reports", "Print the JSON Schema (draft 2020-12) of the JSON report."),
    "merge": LazyCommand(
        "bncheck.cli.engines",
        "Merge partial BN statistics (one file per shard) exactly into one file for 'bncheck drift MODEL --stats OUT'. Refuses parts of another model, other preprocessing or another listing of DATA, and overlapping parts.",
    ),
    "config": LazyCommand(
        "bncheck.cli.settings",
        "Print the effective settings and where each came from: a default, the config file ([tool.bncheck] in the nearest pyproject.toml, then bncheck.toml, or --config), a BNCHECK_* environment variable, or an option given here (the options of drift and recalibrate). Precedence: option > environment variable > config file > default.",
    ),
}


class BncheckGroup(LazyGroup):
    lazy_commands = COMMANDS


app = typer.Typer(
    cls=BncheckGroup,
    name="bncheck",
    help="Diagnostics for the batch-normalization layers of trained networks.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion
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
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks on errors (anywhere on the line).")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show the libraries' own warnings and log messages (anywhere on the line).")
    ] = False,
) -> None:
    State.debug, State.verbose = debug, verbose
    quiet_libraries(debug or verbose)  # numpy/PIL/torch warnings and logged tracebacks only under --verbose/--debug


def run(args: Sequence[str] | None = None) -> None:
    """Run the app on ``args`` (default: the process's arguments)."""
    app(args=None if args is None else list(args), prog_name="bncheck")


def main() -> None:
    run()
