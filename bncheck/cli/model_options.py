"""What the commands that read a model and write one share: the MODEL argument, ``--to``,
``--layers`` and where the written model goes (``--out``, or the contract's ``-o OUT``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bncheck.backends.output import OUTPUT_KINDS
from bncheck.cli.bundles import ReportArgs
from bncheck.cli.common import choice
from bncheck.errors import UsageError

ModelArg = Annotated[Path, typer.Argument(help="Model file: .onnx, .pt/.pth (+ --arch), .pt2, .ts, .safetensors (+ --arch).")]
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


def model_out(out: Path | None, report: ReportArgs, what: str) -> Path:
    """The model file to write: ``--out``, else ``-o`` when it names a model file. The contract
    spells these commands ``bncheck fold MODEL -o OUT`` / ``recalibrate MODEL DATA -o OUT``, so
    that form is kept for good (no warning); ``-o run.json`` names the report as in every command."""
    if out is None and report.output is not None and Path(report.output).suffix.lower() in MODEL_SUFFIXES:
        out, report.output = Path(report.output), None
    if out is None:
        raise UsageError(f"give -o OUT (a model file: {', '.join(MODEL_SUFFIXES)}) or --out FILE: where to write the {what}.")
    return out
