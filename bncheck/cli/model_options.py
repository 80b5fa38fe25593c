"""What the commands that read a model and write one share: the MODEL argument, ``--to``,
``--layers`` and where the written model goes (``--out``, or the old ``-o MODEL_FILE``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bncheck.backends.output import OUTPUT_KINDS
from bncheck.cli.bundles import ReportArgs
from bncheck.cli.common import choice, err
from bncheck.errors import UsageError

ModelArg = Annotated[Path, typer.Argument(help="Model file: .onnx, .pt/.pth (+ --arch), .pt2, .ts, .safetensors (+ --arch).")]
ToOpt = Annotated[
    choice(OUTPUT_KINDS) | None, typer.Option("--to", case_sensitive=False, help="Output kind (default: from OUT's extension).")
]
LayersOpt = Annotated[str | None, typer.Option("--layers", help="Only these BN layers (comma-separated names).")]

#: the extensions of model files: ``-o`` with one of them is the old meaning of ``-o`` in fold/recalibrate
MODEL_SUFFIXES = (".onnx", ".pt", ".pth", ".pt2", ".ts", ".safetensors")


def layer_names(layers: str | None) -> list[str] | None:
    """``--layers a, b`` as a list of names (None: every layer)."""
    return [name.strip() for name in layers.split(",") if name.strip()] if layers else None


def model_out(out: Path | None, report: ReportArgs, what: str) -> Path:
    """The model file to write. ``-o`` names the report in every command; ``-o MODEL_FILE``
    (the old meaning in fold and recalibrate) is still read as ``--out``, with a warning."""
    if out is None and report.output is not None and Path(report.output).suffix.lower() in MODEL_SUFFIXES:
        err(
            f"warning: -o names the report in every command now; write the {what} with --out {report.output} "
            "(-o MODEL_FILE is read as --out until bncheck 0.3)."
        )
        out, report.output = Path(report.output), None
    if out is None:
        raise UsageError(f"give --out FILE: where to write the {what}.")
    return out
