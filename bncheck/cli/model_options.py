"""What the commands that read a model and write one share: the MODEL argument, ``--to``,
``--layers`` and where the written model goes (``--out``, or the contract's ``-o OUT``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bncheck.backends.output import OUTPUT_KINDS
from bncheck.cli.bundles import GateArgs, ReportArgs
from bncheck.cli.common import choice
from bncheck.cli.guard import guard_outputs
from bncheck.config import Settings
from bncheck.errors import UsageError

ModelArg = Annotated[Path, typer.Argument(metavar="MODEL", help="Model file: .onnx, .pt/.pth (+ --arch), .pt2, .ts, .safetensors (+ --arch).")]
ToOpt = Annotated[
    choice(OUTPUT_KINDS) | None, typer.Option("--to", case_sensitive=False, help="Output kind (default: from OUT's extension).")
]
LayersOpt = Annotated[str | None, typer.Option("--layers", help="Only these BN layers (comma-separated names).")]

#: the extensions of model files: in fold/recalibrate ``-o`` with one of them names OUT (the contract's
#: ``bncheck fold MODEL -o OUT``), any other ``-o`` the report
MODEL_SUFFIXES = (".onnx", ".pt", ".pth", ".pt2", ".ts", ".safetensors")


def layer_names(layers: str | None) -> list[str] | None:
    """``--layers a, b`` as a list of names (None: every layer)."""
    return [name.strip() for name in layers.split(",") if name.strip()] if layers else None


#: how refusals name OUT when it came from ``-o``: click does not say which of ``-o`` and
#: ``--output`` was typed, so both forms
OUTPUT_FLAGS = "-o/--output"


def model_out(out: Path | None, report: ReportArgs, what: str) -> tuple[Path, str]:
    """The model file to write and the option that named it, for refusals: ``--out``, else
    ``-o`` when it names a model file. The contract spells these commands ``bncheck fold MODEL
    -o OUT`` / ``recalibrate MODEL DATA -o OUT``, so that form is kept for good (no warning);
    ``-o run.json`` names the report as in every command."""
    if out is not None:
        return out, "--out"
    if report.output is not None and Path(report.output).suffix.lower() in MODEL_SUFFIXES:
        out, report.output = Path(report.output), None
        return out, OUTPUT_FLAGS
    suffixes = ", ".join(MODEL_SUFFIXES)
    if report.output is not None and Path(report.output).is_dir():
        raise UsageError(
            f"-o/--output {report.output} is a directory, not a model file; name a file in it ({suffixes}) "
            f"to write the {what} to, or give --out FILE."
        )
    if report.output is not None and str(report.output) != "-":
        raise UsageError(
            f"-o/--output {report.output} names the report, not a model file ({suffixes}); give -o OUT with one of "
            f"those extensions, or --out FILE beside it, for where to write the {what}."
        )
    raise UsageError(f"give -o OUT (a model file: {suffixes}) or --out FILE: where to write the {what}.")


def model_writing_run(
    command: str, what: str, model: Path, out: Path | None, *, gate: GateArgs, report: ReportArgs, inputs: dict[str, list]
) -> tuple[Path, Settings, str]:
    """What fold and recalibrate check before any work: the model file to write (as
    :func:`model_out`; ``what`` names it in the error), the settings, the report format, and that OUT and the report overwrite
    none of MODEL, ``inputs`` (role to paths, as for ``guard_outputs``) or each other."""
    out, flag = model_out(out, report, what)
    settings = gate.settings()
    fmt = report.format(settings, command)
    guard_outputs({flag: out, "--output": report.output}, models=[model], inputs=inputs, settings=settings)
    return out, settings, fmt
